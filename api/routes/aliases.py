"""Aliases: ``name@alias`` names one version of a named adapter (``name@production``). Moving
one is one transaction; classify resolves it on every request, so a move (or a rollback: the
move back) takes effect at once and evicts nothing: the versions stay resident by id."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import IntegrityError

from clipfit_core.prompts import shorten
from registry import crud

from ..auth import Reader, Trainer
from ..deps import SessionDep, not_found
from ..schemas import Timestamp

router = APIRouter(prefix="/v1/aliases", tags=["adapters"])
ALIAS_PATTERN = r"^[a-z][a-z0-9_-]{0,39}$"  # never all digits: name@3 is version 3
AliasName = Annotated[str, Path(pattern=ALIAS_PATTERN, description="e.g. production")]


class AliasSet(BaseModel):
    name: str = Field(min_length=1, max_length=200, description="the adapters' name")
    version: int | None = Field(None, ge=1, description="the version to point at")
    adapter_id: str | None = Field(None, max_length=32, description="or the adapter itself")


class AliasPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    name: str
    alias: str
    adapter_id: str
    version: int | None = None
    reference: str = Field("", description="what classify accepts: name@alias")
    updated_at: Timestamp


class AliasesPublic(BaseModel):
    data: list[AliasPublic]


def _public(session, row) -> AliasPublic:
    adapter = crud.get_adapter(session, adapter_id=row.adapter_id)
    return AliasPublic(name=row.name, alias=row.alias, adapter_id=row.adapter_id,
                       version=adapter.version if adapter else None,
                       reference=f"{row.name}@{row.alias}", updated_at=row.updated_at)


@router.put("/{alias}", response_model=AliasPublic,
            summary="Point name@alias at one version (create or move; rollback = move back)")
def set_alias(alias: AliasName, body: AliasSet, session: SessionDep, principal: Trainer):
    if (body.version is None) == (body.adapter_id is None):
        raise HTTPException(422, detail={"message": "invalid alias", "problems": [
            "give either version or adapter_id"]})
    tenant = principal.tenant_id
    reference = body.adapter_id or f"{body.name}@{body.version}"
    adapter = crud.resolve_adapter(session, tenant_id=tenant, reference=reference)
    if adapter is None:
        raise not_found("adapter", reference)
    if adapter.name != body.name:
        problem = (f"adapter {adapter.id} is named {shorten(adapter.name)}, not "
                   f"{shorten(body.name)}")
        raise HTTPException(422, detail={"message": "invalid alias", "problems": [problem]})
    try:
        row = crud.set_alias(session, tenant_id=tenant, name=body.name, alias=alias,
                             adapter=adapter)
        session.commit()
    except IntegrityError as e:  # created by a concurrent request, or the adapter deleted
        session.rollback()
        raise HTTPException(409, detail=f"{body.name}@{alias} or its adapter changed "
                            "concurrently; retry") from e
    return _public(session, row)


@router.get("", response_model=AliasesPublic)
def list_aliases(session: SessionDep, principal: Reader,
                 name: Annotated[str | None, Query(max_length=200)] = None):
    rows = crud.list_aliases(session, tenant_id=principal.tenant_id, name=name)
    return AliasesPublic(data=[_public(session, r) for r in rows])


@router.delete("/{alias}", status_code=204)
def delete_alias(alias: AliasName, session: SessionDep, principal: Trainer,
                 name: Annotated[str, Query(min_length=1, max_length=200)]):
    if not crud.delete_alias(session, tenant_id=principal.tenant_id, name=name, alias=alias):
        raise not_found("alias", f"{name}@{alias}")
    session.commit()
    return Response(status_code=204)

