"""Tenants and their API keys (the operator's business: the ``admin`` scope over HTTP, and
``clipfit keys`` on the database directly)."""

from __future__ import annotations

from collections.abc import Sequence

from registry import tenants as tenant_rows
from registry.models import DEFAULT_TENANT, SCOPES, ApiKey, Tenant

from .context import Context
from .errors import Invalid, NotFound
from .invalidation import Change


def create_tenant(ctx: Context, name: str) -> Tenant:
    with ctx.transaction(conflict=f"a tenant named {name!r} exists") as s:
        return tenant_rows.create_tenant(s, name=name)


def list_tenants(ctx: Context) -> list[Tenant]:
    with ctx.reading() as s:
        return tenant_rows.list_tenants(s)


def create_key(ctx: Context, *, tenant: str, scopes: Sequence[str], name: str | None = None,
               create_tenant: bool = False) -> tuple[ApiKey, str, bool]:
    """(key, its secret: shown once, whether the tenant was created). The tenant is named;
    with ``create_tenant`` a new name makes a new tenant."""
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise Invalid([f"scopes: give one or more of {', '.join(SCOPES)}"])
    with ctx.transaction() as s:
        row = tenant_rows.get_tenant_by_name(s, name=tenant)
        created = row is None
        if created:
            if not create_tenant:
                raise NotFound("tenant", tenant)
            row = tenant_rows.create_tenant(s, name=tenant)
        key, secret = tenant_rows.create_key(s, tenant_id=row.id, scopes=list(scopes),
                                             name=name)
        return key, secret, created


def list_keys(ctx: Context) -> list[tuple[ApiKey, str]]:
    """Every key with its tenant's name."""
    with ctx.reading() as s:
        names = {t.id: t.name for t in tenant_rows.list_tenants(s)}
        return [(k, names.get(k.tenant_id, k.tenant_id)) for k in tenant_rows.list_keys(s)]


def revoke_key(ctx: Context, key_id: str) -> None:
    """The key stops working at once in this process, and in every other API process within
    ``service.invalidation``'s bound."""
    with ctx.transaction() as s:
        if tenant_rows.revoke_key(s, key_id=key_id) is None:
            raise NotFound("key", key_id)
    ctx.invalidation.changed(Change("key", key_id))


def bootstrap_admin_key(ctx: Context, *, secret: str | None = None) -> str | None:
    """On a database with no key at all, an admin key of the default tenant: ``secret`` (the
    operator's, from CLIPFIT_BOOTSTRAP_ADMIN_KEY_FILE) or a random one. Returns the secret
    stored, or None when a key exists already (nothing is changed then)."""
    if secret is not None:
        problem = tenant_rows.key_format_problem(secret)
        if problem:
            make = (f"python3 -c \"import secrets; print('{tenant_rows.KEY_PREFIX}' + "
                    "secrets.token_urlsafe(32))\"")
            raise Invalid([f"{problem}; make one with: {make}"], "invalid bootstrap admin key")
    with ctx.transaction() as s:
        if tenant_rows.count_keys(s):
            return None
        _, stored = tenant_rows.create_key(s, tenant_id=DEFAULT_TENANT, scopes=["admin"],
                                           name="first admin key", secret=secret)
        return stored
