"""Tenants and API keys (the ``admin`` scope: the operator's keys)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Response

from service import tenants

from ..auth import Admin
from ..deps import ContextDep
from ..schemas import KeyCreate, KeyCreated, KeyPublic, KeysPublic, TenantPublic, TenantsPublic

router = APIRouter(prefix="/v1", tags=["admin"])
TenantName = Annotated[str, Body(embed=True, min_length=1, max_length=100,
                                 pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]


@router.post("/tenants", status_code=201, response_model=TenantPublic)
def create_tenant(ctx: ContextDep, _: Admin, name: TenantName):
    return tenants.create_tenant(ctx, name)


@router.get("/tenants", response_model=TenantsPublic)
def list_tenants(ctx: ContextDep, _: Admin):
    return TenantsPublic(data=tenants.list_tenants(ctx))


@router.post("/keys", status_code=201, response_model=KeyCreated,
             summary="Create an API key; its secret is in this answer only")
def create_key(ctx: ContextDep, _: Admin, body: KeyCreate):
    key, secret, _created = tenants.create_key(ctx, tenant=body.tenant, scopes=body.scopes,
                                               name=body.name)
    return KeyCreated.model_validate(key).model_copy(update={"key": secret,
                                                              "tenant": body.tenant})


@router.get("/keys", response_model=KeysPublic)
def list_keys(ctx: ContextDep, _: Admin):
    return KeysPublic(data=[KeyPublic.model_validate(k).model_copy(update={"tenant": tenant})
                            for k, tenant in tenants.list_keys(ctx)])


@router.delete("/keys/{key_id}", status_code=204, response_class=Response)
def revoke_key(key_id: str, ctx: ContextDep, _: Admin):
    """The key stops working at once here, and on every other API replica within
    ``service.invalidation``'s bound (docs: operations, "Several API replicas")."""
    tenants.revoke_key(ctx, key_id)
    return Response(status_code=204)
