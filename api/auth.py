"""Who is calling: API keys (``Authorization: Bearer KEY`` or ``X-API-Key: KEY``), their
tenant and scopes. Another tenant's ids answer 404 exactly like unknown ones (the routes
filter by tenant); a key without the scope a route needs answers 403; no key, 401."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from cachetools import TTLCache
from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from registry.models import DEFAULT_TENANT, SCOPES
from registry.tenants import get_key_by_secret, hash_key

_bearer = HTTPBearer(auto_error=False, description="an API key: Authorization: Bearer KEY")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="an API key")


@dataclass(frozen=True)
class Principal:
    tenant_id: str
    scopes: frozenset[str]
    key_id: str | None  # None when authentication is off

    def allows(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes


ANONYMOUS_ADMIN = Principal(DEFAULT_TENANT, frozenset(SCOPES), None)


class KnownKeys:
    """Keys checked recently, by their hash: authentication keeps working through a database
    blip. A revoked key stops working here at once when it is revoked in this process or
    another one's revocation reaches it (``service.invalidation``), and within
    CLIPFIT_KEY_CACHE_SECONDS (the TTL) in any case."""

    def __init__(self, ttl: float):
        self._cache: TTLCache[str, Principal] = TTLCache(maxsize=10_000, ttl=ttl)
        self._lock = threading.Lock()

    def get(self, digest: str) -> Principal | None:
        with self._lock:
            return self._cache.get(digest)

    def put(self, digest: str, principal: Principal) -> None:
        with self._lock:
            self._cache[digest] = principal

    def drop(self, digest: str) -> None:
        with self._lock:
            self._cache.pop(digest, None)

    def forget_key(self, key_id: str) -> None:
        with self._lock:
            for digest in [d for d, p in self._cache.items() if p.key_id == key_id]:
                del self._cache[digest]

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()


def authenticate(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    header: Annotated[str | None, Depends(_header)],
) -> Principal:
    if not request.app.state.settings.auth:
        return ANONYMOUS_ADMIN
    secret = bearer.credentials if bearer is not None else header
    if not secret:
        raise HTTPException(401, detail="an API key is required: Authorization: Bearer KEY",
                            headers={"WWW-Authenticate": "Bearer"})
    known: KnownKeys = request.app.state.known_keys
    digest = hash_key(secret[:200])
    principal = known.get(digest)
    if principal is None:  # else: a key seen within CLIPFIT_KEY_CACHE_SECONDS
        invalidation = request.app.state.context.invalidation
        generation = invalidation.generation
        with request.app.state.context.sessions() as session:
            key = get_key_by_secret(session, secret=secret[:200])
            if key is None:
                raise HTTPException(401, detail="unknown or revoked API key",
                                    headers={"WWW-Authenticate": "Bearer"})
            principal = Principal(key.tenant_id, frozenset(key.scopes), key.id)
        known.put(digest, principal)
        if invalidation.stale_since(generation):  # a revocation may have crossed the read
            known.drop(digest)
    request.app.state.context.quotas.hit_request(principal.key_id)
    return principal


def require(scope: str) -> Callable[..., Principal]:
    """A dependency: the caller, who must hold ``scope`` (or ``admin``)."""

    def check(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
        if not principal.allows(scope):
            raise HTTPException(403, detail=f"this API key lacks the '{scope}' scope")
        return principal

    return check


def unless_open(setting: str, scope: str) -> Callable[..., None]:
    """A dependency: open when the boolean setting ``setting`` is on, else like
    ``require(scope)``."""

    def check(request: Request,
              bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
              header: Annotated[str | None, Depends(_header)]) -> None:
        if getattr(request.app.state.settings, setting):
            return
        principal = authenticate(request, bearer, header)
        if not principal.allows(scope):
            raise HTTPException(403, detail=f"this API key lacks the '{scope}' scope")

    return check


Reader = Annotated[Principal, Depends(require("read"))]
Trainer = Annotated[Principal, Depends(require("train"))]
Classifier = Annotated[Principal, Depends(require("classify"))]
Admin = Annotated[Principal, Depends(require("admin"))]
