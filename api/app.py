"""The FastAPI application, built for one settings object by ``create_app``."""

from __future__ import annotations

import contextlib
import logging

from fastapi import Depends, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse

from registry.settings import Settings
from service.context import Context
from service.invalidation import Change, Invalidation

from . import errors
from .auth import KnownKeys, unless_open
from .inference import InferenceEngine
from .limits import BodyLimitMiddleware
from .metrics import MetricsMiddleware
from .routes import (
    adapters,
    admin,
    aliases,
    captures,
    classify,
    datasets,
    health,
    jobs,
    models,
    predictions,
    stats,
    webhooks,
)
from .schemas import ERROR_RESPONSES, without_null_parameters
from .web import mount_page

log = logging.getLogger(__name__)


def watch_changes(invalidation: Invalidation, known_keys: KnownKeys,
                  engine: InferenceEngine) -> None:
    """What a change committed in any API process makes stale here: revoked keys, deleted
    adapters; everything after a lost subscription (``service.invalidation``)."""

    def drop(change: Change) -> None:
        if change.kind == "key":
            known_keys.forget_key(change.id)
        elif change.kind == "adapter":
            engine.forget(change.id)

    def clear() -> None:
        known_keys.clear()
        engine.forget_adapter_rows()

    invalidation.on_change(drop)
    invalidation.on_reset(clear)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API for ``settings`` (default: read from the environment): the use cases'
    context (database, job queue, quotas) and the inference engine live on ``app.state``
    and reach routes through ``api.deps``."""
    settings = settings or Settings()
    docs = settings.open_docs  # else served below, behind a key

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.context.captures.start()  # writes captures, sweeps expired ones
        app.state.context.served.start()  # adds served counts to the database, checks drift
        app.state.context.invalidation.start()  # hears other replicas' changes (Redis)
        yield
        app.state.context.invalidation.close()
        app.state.inference.close()  # the inference threads finish their batch and stop
        app.state.context.captures.close()  # what is queued is written first
        app.state.context.served.close()  # a last flush

    app = FastAPI(title="clipfit", version=health.RELEASE, lifespan=lifespan,
                  description="Few-shot CLIP fine-tuning with ClipFit, served as tiny deltas.",
                  docs_url="/docs" if docs else None, redoc_url=None,
                  openapi_url="/openapi.json" if docs else None, responses=ERROR_RESPONSES)
    fastapi_openapi = app.openapi  # built once and cached by FastAPI; the edit is idempotent
    app.openapi = lambda: without_null_parameters(fastapi_openapi())
    if not docs:
        guard = [Depends(unless_open("open_docs", "read"))]

        @app.get("/openapi.json", include_in_schema=False, dependencies=guard)
        def openapi_behind_a_key():
            return JSONResponse(app.openapi())

        @app.get("/docs", include_in_schema=False, dependencies=guard)
        def docs_behind_a_key():
            return get_swagger_ui_html(openapi_url="/openapi.json", title="clipfit")
    app.state.settings = settings
    app.state.context = context = Context.create(settings,
                                                 inference=InferenceEngine(settings))
    app.state.inference = context.inference
    # keys seen recently: authentication keeps working through a database blip
    app.state.known_keys = known_keys = KnownKeys(settings.key_cache_seconds)
    watch_changes(context.invalidation, known_keys, context.inference)
    app.add_middleware(MetricsMiddleware)

    app.add_middleware(BodyLimitMiddleware, settings=settings)  # outermost: before parsing

    for module in (jobs, predictions, datasets, adapters, captures, stats, aliases, classify,
                   models, webhooks, admin, health):
        app.include_router(module.router)
    mount_page(app)

    errors.install(app)

    return app
