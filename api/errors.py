"""The one place where errors become HTTP answers. Every error answer has one JSON shape:

    {"code": "not_found", "message": "job 12ab not found", "problems": [],
     "detail": "job 12ab not found"}

``code`` names the kind (stable, for programs), ``message`` is a sentence, ``problems`` lists
every problem found (422 answers name them all). ``detail`` keeps what clients of 0.1 read:
the sentence, or for 422 ``{"message", "problems"}``. A database, broker or blob store that
is away is a 503 with Retry-After, never a 500."""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import InterfaceError
from sqlalchemy.exc import OperationalError as SQLAlchemyOperationalError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError
from starlette.exceptions import HTTPException
from starlette.routing import Match

from registry.blobstore import BlobMissing, BlobStoreUnavailable
from service.errors import (
    Conflict,
    DomainError,
    Invalid,
    NotFound,
    OverQuota,
    Unavailable,
    capped,
)

log = logging.getLogger(__name__)

STATUS = {Invalid: 422, NotFound: 404, Conflict: 409, OverQuota: 429, Unavailable: 503}
CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
         405: "method_not_allowed", 409: "conflict", 413: "too_large", 422: "invalid",
         429: "over_quota", 503: "unavailable"}


def error_response(status: int, message: str, *, problems: list[str] | None = None,
                   code: str | None = None, retry_after: float | None = None,
                   headers: dict[str, str] | None = None, detail=None) -> JSONResponse:
    """The answer for an error: the one shape, with Retry-After when retrying can help."""
    headers = dict(headers or {})
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    listed = capped(problems) if problems else []
    if detail is None:
        detail = {"message": message, "problems": listed} if status == 422 else message
    return JSONResponse(status_code=status, headers=headers, content={
        "code": code or CODES.get(status, "error"), "message": message, "problems": listed,
        "detail": detail})


METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def allowed_methods(request: Request) -> str:
    """Every method the request's path answers, for a 405's ``Allow``: Starlette's lists only
    those of the first route whose path matched (only ``GET`` at ``/v1/keys``, which also
    takes ``POST``)."""
    return ", ".join(method for method in METHODS if any(
        route.matches({**request.scope, "method": method})[0] is Match.FULL
        for route in request.app.router.routes))


def install(app: FastAPI) -> None:
    """Map domain errors, HTTP errors, validation errors and unreachable dependencies."""

    @app.exception_handler(DomainError)
    async def domain_error(_request: Request, exc: DomainError):
        status = next((code for kind, code in STATUS.items() if isinstance(exc, kind)), 400)
        return error_response(status, exc.message, code=exc.code,
                              problems=getattr(exc, "problems", None),
                              retry_after=exc.retry_after)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        detail, headers = exc.detail, exc.headers
        if exc.status_code == 405 and (allowed := allowed_methods(request)):
            headers = {**(headers or {}), "Allow": allowed}
        if isinstance(detail, dict):  # a {message, problems} body
            return error_response(exc.status_code, str(detail.get("message", "")),
                                  problems=list(detail.get("problems", [])),
                                  headers=headers)
        return error_response(exc.status_code, str(detail), headers=headers,
                              problems=[str(detail)] if exc.status_code == 422 else None,
                              detail=detail)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError):
        problems = [f"{'.'.join(str(p) for p in e['loc'][1:]) or e['loc'][0]}: {e['msg']}"
                    for e in exc.errors()]
        return error_response(422, "invalid request", problems=problems)

    @app.exception_handler(SQLAlchemyOperationalError)
    @app.exception_handler(InterfaceError)
    async def database_unavailable(_request: Request, exc: Exception):
        log.warning("database unavailable: %s", type(exc).__name__)
        return error_response(503, "the database is unavailable; nothing was changed, retry "
                              "shortly", retry_after=5)

    @app.exception_handler(SQLAlchemyTimeoutError)
    async def database_busy(_request: Request, exc: Exception):
        log.warning("database connection pool exhausted: %s", type(exc).__name__)
        return error_response(503, "the database is busy; nothing was changed, retry shortly",
                              retry_after=2)

    @app.exception_handler(BlobStoreUnavailable)
    async def blob_store_unavailable(_request: Request, exc: Exception):
        log.warning("blob store unavailable: %s", exc)
        return error_response(503, "the blob store is unavailable; nothing was changed, "
                              "retry shortly", retry_after=5)

    @app.exception_handler(BlobMissing)
    async def blob_missing(_request: Request, exc: Exception):  # an operator's problem
        log.error("blob missing from the blob store: %s (run 'clipfit blobs verify')", exc)
        return error_response(503, "stored bytes this request needs are missing from the "
                              "blob store; the operator has been told", retry_after=60)

    @app.exception_handler(KombuOperationalError)
    @app.exception_handler(RedisConnectionError)  # none expected: quotas count in memory then
    @app.exception_handler(RedisTimeoutError)
    async def broker_unavailable(_request: Request, exc: Exception):
        log.warning("job queue unavailable: %s", type(exc).__name__)
        return error_response(503, "the job queue is unavailable; retry shortly",
                              retry_after=5)
