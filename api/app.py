"""The FastAPI application, built for one settings object by ``create_app``."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from registry.db import get_engine, session_factory
from registry.settings import Settings

from .inference import InferenceEngine
from .limits import BodyLimitMiddleware
from .metrics import MetricsMiddleware
from .queue import JobQueue
from .routes import adapters, classify, health, jobs


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API for ``settings`` (default: read from the environment): its database, job
    queue and inference engine live on ``app.state`` and reach routes through ``api.deps``."""
    settings = settings or Settings()
    app = FastAPI(title="clipfit", version="0.1.0",
                  description="Few-shot CLIP fine-tuning with ClipFit, served as tiny deltas.")
    app.state.settings = settings
    app.state.sessions = session_factory(get_engine(settings.sqlalchemy_url))
    app.state.queue = JobQueue(settings)
    app.state.inference = InferenceEngine(settings)
    app.add_middleware(MetricsMiddleware)

    app.add_middleware(BodyLimitMiddleware, settings=settings)  # outermost: before parsing

    for module in (jobs, adapters, classify, health):
        app.include_router(module.router)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError):
        problems = [f"{'.'.join(str(p) for p in e['loc'][1:]) or e['loc'][0]}: {e['msg']}"
                    for e in exc.errors()]
        return JSONResponse(status_code=422, content={
            "detail": {"message": "invalid request", "problems": problems}})

    return app
