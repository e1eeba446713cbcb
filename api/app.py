"""The FastAPI application."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from registry.settings import get_settings

from .metrics import MetricsMiddleware
from .routes import adapters, classify, health, jobs


def create_app() -> FastAPI:
    app = FastAPI(title="clipfit", version="0.1.0",
                  description="Few-shot CLIP fine-tuning with ClipFit, served as tiny deltas.")
    app.add_middleware(MetricsMiddleware)

    @app.middleware("http")
    async def limit_request_size(request: Request, call_next):
        length, limit = request.headers.get("content-length", ""), get_settings().max_request_bytes
        if length.isdigit() and int(length) > limit:
            return JSONResponse(status_code=413, content={"detail": (
                f"request body of {length} bytes exceeds the limit of {limit} bytes "
                "(CLIPFIT_MAX_REQUEST_BYTES)")})
        return await call_next(request)
    for module in (jobs, adapters, classify, health):
        app.include_router(module.router)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError):
        problems = [f"{'.'.join(str(p) for p in e['loc'][1:]) or e['loc'][0]}: {e['msg']}"
                    for e in exc.errors()]
        return JSONResponse(status_code=422, content={
            "detail": {"message": "invalid request", "problems": problems}})

    return app


app = create_app()
