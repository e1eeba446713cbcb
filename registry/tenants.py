"""Tenants and their API keys (random secrets, stored hashed).

Keyword-only arguments; ``None`` when nothing is found; the caller owns the transaction."""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .db import owned as _owned
from .models import (
    ApiKey,
    Tenant,
    utcnow,
)

KEY_PREFIX = "cfk_"
# token_urlsafe(32) gives 43 characters; a key given by the operator needs 32 (192 bits)
MIN_KEY_CHARS = 32
_KEY_BODY = re.compile(r"[A-Za-z0-9_-]+")


def create_tenant(session: Session, *, name: str) -> Tenant:
    tenant = Tenant(name=name)
    session.add(tenant)
    session.flush()
    return tenant


def get_tenant(session: Session, *, tenant_id: str) -> Tenant | None:
    return session.get(Tenant, tenant_id)


def get_tenant_by_name(session: Session, *, name: str) -> Tenant | None:
    return session.scalar(select(Tenant).where(Tenant.name == name))


def list_tenants(session: Session) -> list[Tenant]:
    return list(session.scalars(select(Tenant).order_by(Tenant.created_at, Tenant.id)))


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def key_format_problem(secret: str) -> str | None:
    """Why ``secret`` does not look like one of our keys (None when it does): ``cfk_`` and at
    least MIN_KEY_CHARS URL-safe base64 characters, as ``create_key`` makes them."""
    if not secret.startswith(KEY_PREFIX):
        return f"it does not start with {KEY_PREFIX!r}"
    body = secret[len(KEY_PREFIX):]
    if not _KEY_BODY.fullmatch(body):
        return "after the prefix, use only the characters A-Z a-z 0-9 _ -"
    if len(body) < MIN_KEY_CHARS:
        return (f"it has {len(body)} characters after the prefix, fewer than {MIN_KEY_CHARS} "
                "(too guessable)")
    if len(set(body)) < MIN_KEY_CHARS // 2:
        return f"it repeats too few distinct characters ({len(set(body))}) to be random"
    return None


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def create_key(session: Session, *, tenant_id: str, scopes: Sequence[str],
               name: str | None = None, secret: str | None = None) -> tuple[ApiKey, str]:
    """A new key and its secret (shown once: only the hash is stored). ``secret``: store
    this one (the caller checked it with ``key_format_problem``) instead of a random one."""
    secret = secret or new_secret()
    key = ApiKey(tenant_id=tenant_id, scopes=list(scopes), name=name,
                 prefix=secret[:12], key_hash=hash_key(secret))
    session.add(key)
    session.flush()
    return key, secret


def get_key_by_secret(session: Session, *, secret: str) -> ApiKey | None:
    """The active (not revoked) key with this secret."""
    return session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(secret),
                                               ApiKey.revoked_at.is_(None)))


def list_keys(session: Session, *, tenant_id: str | None = None) -> list[ApiKey]:
    return list(session.scalars(_owned(select(ApiKey), ApiKey, tenant_id)
                                .order_by(ApiKey.created_at, ApiKey.id)))


def count_keys(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(ApiKey)) or 0


def revoke_key(session: Session, *, key_id: str) -> ApiKey | None:
    key = session.get(ApiKey, key_id)
    if key is not None and key.revoked_at is None:
        key.revoked_at = utcnow()
    return key
