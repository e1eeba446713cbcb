"""The registry of trained deltas."""

from __future__ import annotations

import io
import json
import zipfile
from typing import Annotated

from fastapi import APIRouter, Query, Response

from clipfit_core.delta import CONFIG_NAME, WEIGHTS_NAME
from registry import crud

from ..auth import Reader, Trainer
from ..deps import InferenceDep, SessionDep, not_found, page_next, page_start
from ..schemas import AdapterPublic, AdaptersPublic

router = APIRouter(prefix="/v1/adapters", tags=["adapters"])


@router.get("", response_model=AdaptersPublic)
def list_adapters(session: SessionDep, principal: Reader, limit: Annotated[int, Query(ge=1, le=200)] = 50,
                  cursor: str | None = None):
    before = page_start(cursor)
    rows = crud.list_adapters(session, tenant_id=principal.tenant_id, limit=limit, before=before)
    return AdaptersPublic(data=rows,
                          next_cursor=page_next(rows, limit))


@router.get("/{adapter_id}", response_model=AdapterPublic)
def get_adapter(adapter_id: str, session: SessionDep, principal: Reader):
    adapter = crud.get_adapter(session, adapter_id=adapter_id, tenant_id=principal.tenant_id)
    if adapter is None:
        raise not_found("adapter", adapter_id)
    return adapter


@router.get("/{adapter_id}/download", response_class=Response,
            responses={200: {"description": "a zip of the two files",
                             "content": {"application/zip": {}}}},
            summary="The two delta files (adapter_model.safetensors, adapter_config.json), zipped")
def download_adapter(adapter_id: str, session: SessionDep, principal: Reader):
    adapter = crud.get_adapter(session, adapter_id=adapter_id, tenant_id=principal.tenant_id)
    if adapter is None:
        raise not_found("adapter", adapter_id)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(WEIGHTS_NAME, crud.get_blob(session, sha256=adapter.weights_sha256))
        z.writestr(CONFIG_NAME, json.dumps(adapter.config, indent=2, sort_keys=True) + "\n")
    return Response(buf.getvalue(), media_type="application/zip", headers={
        "Content-Disposition": f'attachment; filename="clipfit-adapter-{adapter_id}.zip"'})


@router.delete("/{adapter_id}", status_code=204)
def delete_adapter(adapter_id: str, session: SessionDep, inference: InferenceDep,
                   principal: Trainer):
    if not crud.delete_adapter(session, adapter_id=adapter_id, tenant_id=principal.tenant_id):
        raise not_found("adapter", adapter_id)
    session.commit()
    inference.forget(adapter_id)
    return Response(status_code=204)
