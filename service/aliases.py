"""Aliases: ``name@alias`` names one version of a named adapter (``name@production``).
Moving one is one transaction; every reference is resolved per request, so a move (or a
rollback: the move back) takes effect at once and evicts nothing."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from clipfit_core.prompts import shorten
from registry import adapters as adapter_rows
from registry.models import AdapterAlias

from .adapters import find
from .context import Caller, Context
from .errors import Invalid, NotFound

INVALID_ALIAS = "invalid alias"


@dataclass
class AliasView:
    name: str
    alias: str
    adapter_id: str
    version: int | None
    reference: str
    updated_at: datetime


def _view(s, row: AdapterAlias) -> AliasView:
    adapter = adapter_rows.get_adapter(s, adapter_id=row.adapter_id)
    return AliasView(name=row.name, alias=row.alias, adapter_id=row.adapter_id,
                     version=adapter.version if adapter else None,
                     reference=f"{row.name}@{row.alias}", updated_at=row.updated_at)


def set_alias(ctx: Context, caller: Caller, alias: str, *, name: str, version: int | None,
              adapter_id: str | None) -> AliasView:
    """Point ``name@alias`` at a version of ``name`` (by number, or by the adapter)."""
    if (version is None) == (adapter_id is None):
        raise Invalid(["give either version or adapter_id"], INVALID_ALIAS)
    with ctx.transaction(conflict=f"{name}@{alias} or its adapter changed concurrently; "
                         "retry") as s:
        adapter = find(s, caller, adapter_id or f"{name}@{version}")
        if adapter.name != name:
            raise Invalid([(f"adapter {adapter.id} is named {shorten(adapter.name)}, not "
                           f"{shorten(name)}")], INVALID_ALIAS)
        row = adapter_rows.set_alias(s, tenant_id=caller.tenant_id, name=name, alias=alias,
                                     adapter=adapter)
        return _view(s, row)


def list_aliases(ctx: Context, caller: Caller, *, name: str | None) -> list[AliasView]:
    with ctx.reading() as s:
        return [_view(s, r) for r in
                adapter_rows.list_aliases(s, tenant_id=caller.tenant_id, name=name)]


def delete_alias(ctx: Context, caller: Caller, alias: str, *, name: str) -> None:
    with ctx.transaction() as s:
        if not adapter_rows.delete_alias(s, tenant_id=caller.tenant_id, name=name,
                                         alias=alias):
            raise NotFound("alias", f"{name}@{alias}")
