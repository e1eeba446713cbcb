"""Tenants and API keys (the ``admin`` scope: the operator's keys)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, HTTPException, Request, Response
from sqlalchemy.exc import IntegrityError

from registry import crud

from ..auth import Admin
from ..deps import SessionDep, not_found
from ..schemas import KeyCreate, KeyCreated, KeyPublic, KeysPublic, TenantPublic, TenantsPublic

router = APIRouter(prefix="/v1", tags=["admin"])


@router.post("/tenants", status_code=201, response_model=TenantPublic)
def create_tenant(session: SessionDep, _: Admin,
                  name: Annotated[str, Body(embed=True, min_length=1, max_length=100,
                                            pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]):
    try:
        tenant = crud.create_tenant(session, name=name)
        session.commit()
    except IntegrityError as e:
        session.rollback()
        raise HTTPException(409, detail=f"a tenant named {name!r} exists") from e
    return tenant


@router.get("/tenants", response_model=TenantsPublic)
def list_tenants(session: SessionDep, _: Admin):
    return TenantsPublic(data=crud.list_tenants(session))


@router.post("/keys", status_code=201, response_model=KeyCreated,
             summary="Create an API key; its secret is in this answer only")
def create_key(session: SessionDep, _: Admin, body: KeyCreate):
    tenant = crud.get_tenant_by_name(session, name=body.tenant)
    if tenant is None:
        raise not_found("tenant", body.tenant)
    key, secret = crud.create_key(session, tenant_id=tenant.id, scopes=body.scopes,
                                  name=body.name)
    session.commit()
    return KeyCreated.model_validate(key).model_copy(update={"key": secret,
                                                              "tenant": tenant.name})


@router.get("/keys", response_model=KeysPublic)
def list_keys(session: SessionDep, _: Admin):
    names = {t.id: t.name for t in crud.list_tenants(session)}
    return KeysPublic(data=[KeyPublic.model_validate(k).model_copy(
        update={"tenant": names.get(k.tenant_id, k.tenant_id)}) for k in crud.list_keys(session)])


@router.delete("/keys/{key_id}", status_code=204, response_class=Response)
def revoke_key(key_id: str, session: SessionDep, _: Admin, request: Request):
    if crud.revoke_key(session, key_id=key_id) is None:
        raise not_found("key", key_id)
    session.commit()
    known = request.app.state.known_keys  # at once in this process (others: the cache's TTL)
    for digest, principal in list(known.items()):
        if principal.key_id == key_id:
            known.pop(digest, None)
    return Response(status_code=204)
