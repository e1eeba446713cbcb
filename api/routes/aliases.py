"""Aliases: ``name@alias`` names one version of a named adapter (``name@production``);
moving one takes effect at once for every request that names it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from service import aliases

from ..auth import Reader, Trainer
from ..deps import ContextDep
from ..schemas import Timestamp

router = APIRouter(prefix="/v1/aliases", tags=["adapters"])
ALIAS_PATTERN = r"^[a-z][a-z0-9_-]{0,39}$"  # never all digits: name@3 is version 3
AliasName = Annotated[str, Path(pattern=ALIAS_PATTERN, description="e.g. production")]


class AliasSet(BaseModel):
    """``name`` and exactly one of ``version`` and ``adapter_id`` (the use case refuses
    both or neither; the schema says so with ``oneOf``)."""

    name: str = Field(min_length=1, max_length=200, description="the adapters' name")
    version: int | None = Field(None, ge=1, description="the version to point at")
    adapter_id: str | None = Field(None, min_length=1, max_length=32,
                                   description="or the adapter itself")

    model_config = ConfigDict(json_schema_extra={"oneOf": [
        {"required": ["version"], "properties": {"version": {"type": "integer"}}},
        {"required": ["adapter_id"], "properties": {"adapter_id": {"type": "string"}}}]})


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


@router.put("/{alias}", response_model=AliasPublic,
            summary="Point name@alias at one version (create or move; rollback = move back)")
def set_alias(alias: AliasName, body: AliasSet, ctx: ContextDep, principal: Trainer):
    return aliases.set_alias(ctx, principal, alias, name=body.name, version=body.version,
                             adapter_id=body.adapter_id)


@router.get("", response_model=AliasesPublic)
def list_aliases(ctx: ContextDep, principal: Reader,
                 name: Annotated[str | None, Query(max_length=200)] = None):
    return AliasesPublic(data=aliases.list_aliases(ctx, principal, name=name))


@router.delete("/{alias}", status_code=204)
def delete_alias(alias: AliasName, ctx: ContextDep, principal: Trainer,
                 name: Annotated[str, Query(min_length=1, max_length=200)]):
    aliases.delete_alias(ctx, principal, alias, name=name)
    return Response(status_code=204)
