"""The request body limit, enforced on the bytes actually received (chunked or not), before
anything is buffered or parsed."""

from __future__ import annotations

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from registry.settings import Settings

from .errors import error_response


def too_large(limit: int) -> HTTPException:
    return HTTPException(413, detail=f"request body exceeds the limit of {limit} bytes "
                                     "(CLIPFIT_MAX_REQUEST_BYTES)")


class BodyLimitMiddleware:
    """413 for a body over ``settings.max_request_bytes``: at once from ``Content-Length``, else as soon as
    the bytes read pass it (the route's reading stops with an HTTPException)."""

    def __init__(self, app: ASGIApp, settings: Settings):
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.settings.max_request_bytes
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > limit:
            await error_response(413, too_large(limit).detail)(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise too_large(limit)
            return message

        await self.app(scope, counting_receive, send)


def http_error_in(error: BaseException) -> HTTPException | None:
    """The HTTPException (a 413 from the body limit) behind a parsing error, when the
    parser's task group wrapped it in an exception group."""
    if isinstance(error, HTTPException):
        return error
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            if (found := http_error_in(inner)) is not None:
                return found
    return None
