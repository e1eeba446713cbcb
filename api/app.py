"""The FastAPI application, built for one settings object by ``create_app``."""

from __future__ import annotations

import contextlib
import logging

from cachetools import TTLCache
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError as KombuOperationalError
from sqlalchemy.exc import InterfaceError
from sqlalchemy.exc import OperationalError as SQLAlchemyOperationalError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError

from registry.db import get_engine, session_factory
from registry.settings import Settings

from .auth import unless_open
from .inference import InferenceEngine
from .limits import BodyLimitMiddleware
from .metrics import MetricsMiddleware
from .queue import JobQueue
from .quotas import Quotas
from .routes import adapters, admin, aliases, classify, datasets, health, jobs, models, webhooks
from .schemas import ERROR_RESPONSES
from .web import mount_page

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API for ``settings`` (default: read from the environment): its database, job
    queue and inference engine live on ``app.state`` and reach routes through ``api.deps``."""
    settings = settings or Settings()
    docs = settings.open_docs  # else served below, behind a key

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        app.state.inference.close()  # the inference threads finish their batch and stop

    app = FastAPI(title="clipfit", version="0.1.0", lifespan=lifespan,
                  description="Few-shot CLIP fine-tuning with ClipFit, served as tiny deltas.",
                  docs_url="/docs" if docs else None, redoc_url=None,
                  openapi_url="/openapi.json" if docs else None, responses=ERROR_RESPONSES)
    if not docs:
        guard = [Depends(unless_open("open_docs", "read"))]

        @app.get("/openapi.json", include_in_schema=False, dependencies=guard)
        def openapi_behind_a_key():
            return JSONResponse(app.openapi())

        @app.get("/docs", include_in_schema=False, dependencies=guard)
        def docs_behind_a_key():
            return get_swagger_ui_html(openapi_url="/openapi.json", title="clipfit")
    app.state.settings = settings
    app.state.sessions = session_factory(get_engine(settings.sqlalchemy_url))
    app.state.queue = JobQueue(settings)
    app.state.inference = InferenceEngine(settings)
    app.state.quotas = Quotas(settings)
    # keys seen recently: authentication keeps working through a database blip; a revoked
    # key stops working within CLIPFIT_KEY_CACHE_SECONDS
    app.state.known_keys = TTLCache(maxsize=10_000, ttl=settings.key_cache_seconds)
    app.add_middleware(MetricsMiddleware)

    app.add_middleware(BodyLimitMiddleware, settings=settings)  # outermost: before parsing

    for module in (jobs, datasets, adapters, aliases, classify, models, webhooks, admin, health):
        app.include_router(module.router)
    mount_page(app)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError):
        problems = [f"{'.'.join(str(p) for p in e['loc'][1:]) or e['loc'][0]}: {e['msg']}"
                    for e in exc.errors()]
        return JSONResponse(status_code=422, content={
            "detail": {"message": "invalid request", "problems": problems}})

    @app.exception_handler(SQLAlchemyOperationalError)
    @app.exception_handler(InterfaceError)
    async def database_unavailable(_request: Request, exc: Exception):
        log.warning("database unavailable: %s", type(exc).__name__)
        return JSONResponse(status_code=503, headers={"Retry-After": "5"}, content={
            "detail": "the database is unavailable; nothing was changed, retry shortly"})

    @app.exception_handler(SQLAlchemyTimeoutError)
    async def database_busy(_request: Request, exc: Exception):
        log.warning("database connection pool exhausted: %s", type(exc).__name__)
        return JSONResponse(status_code=503, headers={"Retry-After": "2"}, content={
            "detail": "the database is busy; nothing was changed, retry shortly"})

    @app.exception_handler(KombuOperationalError)
    async def broker_unavailable(_request: Request, exc: Exception):
        log.warning("job queue unavailable: %s", type(exc).__name__)
        return JSONResponse(status_code=503, headers={"Retry-After": "5"}, content={
            "detail": "the job queue is unavailable; retry shortly"})

    return app
