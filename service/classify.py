"""Classification with any adapter (by id, ``name@VERSION`` or ``name@alias``), or zero-shot
over plain class names: the reference resolved, the calibration policy applied, the images
decoded and classified by the serving engine in shared batches."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from anyio.to_thread import run_sync
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError

from clipfit_core.classify import calibration_for
from clipfit_core.prompts import classname_problems, resolve_templates, shorten
from clipfit_core.serving import Overloaded, ServerClosed
from registry import adapters as adapter_rows

from .adapters import AdapterInfo, base_model_errors
from .capture_writer import lineage_of
from .context import Caller, Context
from .errors import Invalid, NotFound, Unavailable
from .uploads import decode_image

INVALID_CLASSIFY = "invalid classification request"


@dataclass(kw_only=True)
class AnswerOptions:
    """With what to answer (an adapter reference, or zero-shot classes on a base model) and
    how: what /v1/classify and a batch prediction share."""

    adapter: str | None = None  # a reference: id, name@VERSION or name@alias
    base_model: str | None = None
    classes: list[str] | None = None  # zero-shot classes, or other classes for an adapter
    template: str | None = None
    top_k: int = 5
    calibrated: bool = True
    reject_unknown: bool = False
    threshold: float | None = None
    problems: list[str] = field(default_factory=list)  # found while parsing the request


@dataclass
class ClassifyRequest(AnswerOptions):
    images: list[tuple[str, bytes]]  # (name, encoded bytes)


@dataclass
class ClassifyResult:
    model: str
    adapter_id: str | None
    predictions: list[dict]
    calibrated: bool
    threshold: float | None


def _adapter_and_delta(ctx: Context, caller: Caller, reference: str):
    """The caller's adapter and its delta: recently looked up ones from memory (no database
    round trip per request; a deletion anywhere drops them, ``service.invalidation``); when
    the database is away, a resident one. A ``name@alias`` or ``name@3`` is resolved in the
    database on every request, so moving an alias takes effect at once on every replica."""
    engine, tenant = ctx.inference, caller.tenant_id
    with ctx.reading() as s:
        adapter_id = reference
        try:
            if "@" in reference:
                row = adapter_rows.resolve_adapter(s, tenant_id=tenant, reference=reference)
                if row is None:
                    raise NotFound("adapter", reference)
                adapter_id = row.id
            adapter = engine.recent_adapter(adapter_id, tenant)
            if adapter is None:
                generation = ctx.invalidation.generation
                row = adapter_rows.get_adapter(s, adapter_id=adapter_id, tenant_id=tenant)
                if row is None:
                    raise NotFound("adapter", reference)
                adapter = engine.remember_adapter(AdapterInfo.of(row))
                if ctx.invalidation.stale_since(generation):  # a deletion crossed the read
                    engine.forget(adapter_id)
            # a deletion crossing the weights' load: the engine keeps no delta loaded across
            # a ``forget`` (api.inference)
            return adapter, engine.delta(s, adapter)
        except (OperationalError, InterfaceError):
            adapter = engine.cached_adapter(adapter_id, tenant)
            if adapter is None:
                raise
            return adapter, engine.delta(s, adapter)


def _resolve(ctx: Context, caller: Caller, reference: str):
    """The adapter, its delta and its lineage's capture rules for this request (None when
    capture is off or does not apply to ``reference``)."""
    adapter, delta = _adapter_and_delta(ctx, caller, reference)
    try:
        with ctx.reading() as s:  # no connection at all while the rules are cached
            rules = ctx.captures.rules(s, caller.tenant_id, lineage_of(adapter))
    except (OperationalError, InterfaceError, SQLAlchemyTimeoutError):
        return adapter, delta, None  # the database is away: classify, capture nothing
    return adapter, delta, rules if rules is not None and rules.applies_to(reference) else None


def answer_options(request: AnswerOptions, adapter, templates: list[str] | None,
                   problems: list[str]) -> tuple[list[str] | None, float, float | None]:
    """(templates, temperature, threshold) for a request's options (its template,
    calibration and rejection), with ``adapter`` (an ``AdapterInfo`` or a row; None:
    zero-shot) and the templates it would use; their problems join ``problems``. The
    adapter's calibration applies only over its own classes and templates."""
    if request.template:
        try:
            templates = resolve_templates(request.template)
        except ValueError as e:
            problems.append(str(e))
    requested = request.classes
    own_classes = adapter is not None and (not requested or requested == adapter.classnames) \
        and (not request.template or templates == adapter.templates)
    temperature, threshold, refusals = calibration_for(
        adapter.config if adapter is not None else None, own_classes=own_classes,
        calibrated=request.calibrated, reject_unknown=request.reject_unknown,
        threshold=request.threshold)
    problems += refusals
    return templates, temperature, threshold


class _ImageProblems(Exception):
    def __init__(self, problems: list[str]):
        self.problems = problems


async def classify(ctx: Context, caller: Caller, request: ClassifyRequest,
                   is_disconnected: Callable[[], Awaitable[bool]]) -> ClassifyResult:
    """The top-k labels per image. Every problem of the request (options and images) is
    named in one ``Invalid``; a busy or stopping classifier is ``Unavailable``."""
    settings, problems = ctx.settings, list(request.problems)
    requested = request.classes
    if requested is not None:
        problems += classname_problems(requested, max_count=settings.max_classes)
    if not request.images:
        problems.append("no images: send 'images' files (multipart) or base64 strings (JSON)")
    if len(request.images) > settings.max_images:
        problems.append(f"{len(request.images)} images, the limit is {settings.max_images}")
    adapter, delta, capture = None, None, None
    if request.adapter:
        # off the event loop (a pool wait must not stall other requests); the session is
        # closed right after, so no connection is held while the request waits for the model
        adapter, delta, capture = await run_sync(_resolve, ctx, caller, request.adapter)
        spec, classnames, templates = adapter.base_model, adapter.classnames, adapter.templates
        if requested:
            classnames = requested  # the paper's new-class use: tuned model, other classes
    else:
        spec, classnames, templates = request.base_model, requested, None
        if not spec or not classnames:
            problems.append("give adapter_id, or base_model and classes for zero-shot")
        elif spec not in settings.allowed_base_models:
            problems.append(f"base_model {shorten(spec)} is not allowed; allowed: "
                            f"{settings.allowed_base_models}")
    templates, temperature, threshold = answer_options(request, adapter, templates, problems)

    def decode_all() -> list[tuple]:
        return [decode_image(data, name, settings) for name, data in request.images]

    if problems:  # decoding only to name the images' problems too
        decoded = await run_sync(decode_all)
        raise Invalid(problems + [problem for _, problem in decoded if problem],
                      INVALID_CLASSIFY)

    def load_images() -> list:
        """Run by the engine off the event loop, with preprocessing, in one hop."""
        decoded = decode_all()
        if bad := [problem for _, problem in decoded if problem]:
            raise _ImageProblems(bad)
        return [image for image, _ in decoded]

    try:
        with base_model_errors():
            predictions = await ctx.inference.classify(
                spec, load_images, list(classnames), resolve_templates(templates), delta,
                request.top_k, is_disconnected, temperature=temperature, threshold=threshold)
    except _ImageProblems as e:
        raise Invalid(e.problems, INVALID_CLASSIFY) from e
    except Overloaded as e:
        raise Unavailable(f"the classifier is busy ({e.queued} images waiting); retry shortly",
                          retry_after=math.ceil(e.retry_after)) from e
    except ServerClosed as e:  # the process is shutting down
        raise Unavailable("the classifier is stopping; retry shortly", retry_after=5) from e
    answers, captured = [p.to_dict() for p in predictions], 0
    if capture is not None and (not requested or requested == adapter.classnames):
        # only answers over the adapter's own classes can be labelled with them; queued
        # here, written after the answer is sent
        captured = ctx.captures.offer(
            capture, tenant_id=caller.tenant_id, lineage=lineage_of(adapter),
            adapter_id=adapter.id, images=request.images, answers=answers)
    if adapter is not None:  # counted in memory; added to served_stats off the request path
        ctx.served.record(tenant_id=caller.tenant_id, adapter_id=adapter.id, answers=answers,
                          captured=captured)
    return ClassifyResult(model=spec, adapter_id=adapter.id if adapter else None,
                          predictions=answers, calibrated=temperature != 1.0,
                          threshold=threshold)
