"""Batch predictions: classify many stored or uploaded images with an adapter (or zero-shot)
in a worker, and keep the answers as files (JSON Lines and CSV). Submitted like a training
job (validated and stored whole, or not at all, then sent to the queue) and run by the same
machinery: a ``jobs`` row of kind "predict" holds the status, attempts, heartbeat,
cancellation, progress and events; ``predictions`` holds the rest."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError

from clipfit_core.prompts import classname_problems, resolve_templates, shorten
from registry import adapters as adapter_rows
from registry import datasets as dataset_rows
from registry import jobs as job_rows
from registry import predictions as prediction_rows
from registry.blobs import get_blob
from registry.models import FINISHED, JobEvent, JobStatus, Prediction, utcnow

from .classify import AnswerOptions, answer_options
from .context import Caller, Context
from .errors import Conflict, Invalid, NotFound, found
from .jobs import repeat_of, send
from .quotas import check_room
from .uploads import images_from_zip

INVALID_PREDICTION = "invalid batch prediction"
MAX_RESULT_ANSWERS = 250_000  # images x top-k answers in one result file (~11 MB of JSON Lines)
STATUSES = tuple(s.value for s in JobStatus)
FORMATS = {"jsonl": "application/x-ndjson", "csv": "text/csv; charset=utf-8"}
SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass
class PredictionRequest(AnswerOptions):
    """A batch prediction as submitted: what to classify (a zip of images, a stored dataset,
    or stored images by sha256), with what and how (the options of /v1/classify)."""

    archive: bytes | None = None
    dataset_id: str | None = None
    images: list[str] | None = None  # sha256 digests of the tenant's stored images
    idempotency_key: str | None = None
    fields_json: str = ""  # the request's non-file fields, for the idempotency digest

    def digest(self) -> str:
        h = hashlib.sha256(b"predict\0" + self.fields_json.encode())
        if self.archive is not None:
            h.update(hashlib.sha256(self.archive).digest())
        return h.hexdigest()


@dataclass
class PredictionView:
    """A prediction as answered: its row, its job's lifecycle fields, and how many images
    are done."""

    id: str
    status: str
    adapter_id: str | None
    adapter: str | None
    base_model: str
    classes: list[str]
    templates: list[str]
    top_k: int
    calibrated: bool
    threshold: float | None
    source: str
    dataset_id: str | None
    counts: dict[str, int]
    progress: dict[str, Any] | None
    attempts: int
    cancel_requested: bool
    error: str | None
    results: dict[str, str] | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, prediction: Prediction) -> PredictionView:
        job = prediction.job
        succeeded = job.status == JobStatus.succeeded.value
        done = prediction.images if succeeded else (job.progress or {}).get("images_done", 0)
        return cls(
            id=job.id, status=job.status, adapter_id=prediction.adapter_id,
            adapter=prediction.adapter_ref, base_model=job.base_model,
            classes=list(prediction.classnames), templates=list(job.templates),
            top_k=prediction.top_k, calibrated=prediction.temperature != 1.0,
            threshold=prediction.threshold, source=prediction.source,
            dataset_id=prediction.dataset_id,
            counts={"images": prediction.images, "done": done,
                    "classified": prediction.classified, "unknown": prediction.unknown,
                    "unreadable": prediction.unreadable},
            progress=job.progress, attempts=job.attempts,
            cancel_requested=job.cancel_requested, error=job.error,
            results={"jsonl_sha256": prediction.results_jsonl_sha256,
                     "csv_sha256": prediction.results_csv_sha256,
                     "bytes": prediction.results_bytes}
            if prediction.results_jsonl_sha256 else None,
            created_at=job.created_at, started_at=job.started_at,
            finished_at=job.finished_at)


def submit(ctx: Context, caller: Caller, request: PredictionRequest
           ) -> tuple[PredictionView, bool]:
    """(prediction, True) for a new one, stored and sent to the queue (later, by the
    reconciler, when the broker is away); (prediction, False) when the same request was sent
    before with the same ``Idempotency-Key``. ``NotFound`` for an adapter or dataset the
    caller cannot see; every other problem in one ``Invalid``. Nothing is stored on a
    refusal. Blocking work (decoding every uploaded image): call it off an event loop."""
    settings, tenant = ctx.settings, caller.tenant_id
    digest = request.digest()
    if (view := _repeat(ctx, tenant, request.idempotency_key, digest)) is not None:
        return view, False
    with ctx.reading() as s:
        check_room(s, settings, tenant, new_job=True, makes_adapter=False)
    if request.archive is not None:
        ctx.quotas.hit_upload(caller.key_id, len(request.archive))
    with ctx.reading() as s:
        plan, problems = _checked(s, ctx, tenant, request)
    uploads: list[tuple[str, bytes]] = []
    if request.archive is not None:
        try:
            uploads = images_from_zip(request.archive, settings)
        except Invalid as e:
            problems += e.problems
    if problems:
        raise Invalid(problems, INVALID_PREDICTION)
    try:
        with ctx.transaction() as s:
            job = prediction_rows.create_prediction(
                s, tenant_id=tenant, uploads=uploads, chunk_size=settings.predict_chunk_size,
                **plan)
            _check_size(prediction_rows.get_prediction(s, job_id=job.id).images, plan)
            if request.idempotency_key:
                job_rows.record_idempotency(s, tenant_id=tenant, key=request.idempotency_key,
                                            request_hash=digest, job_id=job.id)
            s.flush()
            view = PredictionView.of(prediction_rows.get_prediction(s, job_id=job.id))
    except IntegrityError:  # the same idempotency key, raced in by a concurrent request
        view = _repeat(ctx, tenant, request.idempotency_key, digest)
        if view is None:
            raise
        return view, False
    send(ctx, job)
    return view, True


def _check_size(images: int, plan: dict[str, Any]) -> None:
    """Something to classify (a dataset deleted meanwhile has nothing), and results of a
    bounded size (images x answers each): ``Invalid`` otherwise (the transaction goes)."""
    answers = min(plan["top_k"], len(plan["classnames"]))
    if images == 0:
        raise Invalid([("no images to classify (the dataset has none, or was deleted "
                       "meanwhile)")], INVALID_PREDICTION)
    if images * answers > MAX_RESULT_ANSWERS:
        raise Invalid([(f"top_k: {images} images x {answers} answers each is more than "
                       f"{MAX_RESULT_ANSWERS:,} answers in the results; ask for top_k <= "
                       f"{max(1, MAX_RESULT_ANSWERS // images)}")], INVALID_PREDICTION)


def _checked(s, ctx: Context, tenant_id: str, request: PredictionRequest
             ) -> tuple[dict[str, Any], list[str]]:
    """(the prediction's fields for ``create_prediction``, every problem of the request).
    ``NotFound`` for an unknown (or another tenant's) adapter or dataset."""
    settings, problems = ctx.settings, list(request.problems)
    requested = request.classes
    if requested is not None:
        problems += classname_problems(requested, max_count=settings.max_classes)
    adapter = None
    if request.adapter:
        adapter = found(adapter_rows.resolve_adapter(s, tenant_id=tenant_id,
                                                     reference=request.adapter),
                        "adapter", request.adapter)
        spec, classnames, templates = adapter.base_model, adapter.classnames, adapter.templates
        if request.base_model is not None and request.base_model != spec:
            problems.append(f"base_model: the adapter was trained on {shorten(spec)}, not "
                            f"{shorten(request.base_model)}; leave base_model out")
        if requested:
            classnames = requested  # the paper's new-class use: tuned model, other classes
    else:
        spec = request.base_model or settings.allowed_base_models[0]
        classnames, templates = requested, None
        if not classnames:
            problems.append("give an adapter, or classes (and optionally base_model) for "
                            "zero-shot")
        if spec not in settings.allowed_base_models:
            problems.append(f"base_model {shorten(spec)} is not allowed; allowed: "
                            f"{settings.allowed_base_models}")
    templates, temperature, threshold = answer_options(request, adapter, templates, problems)
    sources = [name for name, given in (("dataset", request.archive is not None),
                                        ("dataset_id", request.dataset_id is not None),
                                        ("images", request.images is not None)) if given]
    if len(sources) != 1:
        problems.append("send exactly one of: a 'dataset' zip of images (multipart), a "
                        "'dataset_id' or a list of stored 'images' (sha256, JSON)"
                        + (f"; got {', '.join(sources)}" if sources else ""))
    stored: list[prediction_rows.NamedImage] = []
    if request.dataset_id is not None:
        found(dataset_rows.get_dataset(s, dataset_id=request.dataset_id, tenant_id=tenant_id),
              "dataset", request.dataset_id)
    if request.images is not None:
        stored = _stored_images(s, tenant_id, request.images, settings.max_images, problems)
    source = "zip" if request.archive is not None else \
        "dataset" if request.dataset_id is not None else "images"
    return {"base_model": spec, "templates": resolve_templates(templates),
            "classnames": list(classnames or []), "top_k": request.top_k,
            "temperature": temperature, "threshold": threshold,
            "adapter_id": adapter.id if adapter is not None else None,
            "adapter_ref": request.adapter, "source": source,
            "dataset_id": request.dataset_id, "stored": stored}, problems


def _stored_images(s, tenant_id: str, digests: list[str], max_images: int,
                   problems: list[str]) -> list[prediction_rows.NamedImage]:
    """The stored images named by sha256 (each its own name in the results); an unknown
    digest, and another tenant's, is the same problem."""
    if not digests:
        problems.append("images: the list is empty")
        return []
    if len(digests) > max_images:
        problems.append(f"images: {len(digests)} images, the limit is {max_images}")
        return []
    malformed = [f"images[{i}]: not a sha256 (64 lowercase hex digits)"
                 for i, d in enumerate(digests) if not SHA256.fullmatch(d)]
    if malformed:
        problems += malformed
        return []
    known = prediction_rows.tenant_images(s, tenant_id=tenant_id, digests=digests)
    problems += [f"images[{i}]: no such image {d[:12]}..." for i, d in enumerate(digests)
                 if d not in known]
    return [prediction_rows.NamedImage(d, d) for d in digests]


def _repeat(ctx: Context, tenant_id: str, key: str | None, digest: str
            ) -> PredictionView | None:
    """The prediction this key made for this request (a key another request used, even a
    training job's, is ``Invalid``)."""
    return repeat_of(ctx, tenant_id, key, digest, _view, INVALID_PREDICTION)


def _view(s, job_id: str) -> PredictionView | None:
    prediction = prediction_rows.get_prediction(s, job_id=job_id)
    return PredictionView.of(prediction) if prediction is not None else None


def _owned(s, caller: Caller | None, prediction_id: str) -> Prediction:
    return found(prediction_rows.get_prediction(
        s, job_id=prediction_id, tenant_id=caller.tenant_id if caller else None),
        "prediction", prediction_id)


def get_prediction(ctx: Context, caller: Caller, prediction_id: str) -> PredictionView:
    with ctx.reading() as s:
        return PredictionView.of(_owned(s, caller, prediction_id))


def list_predictions(ctx: Context, caller: Caller, *, status: str | None, limit: int,
                     before=None) -> list[PredictionView]:
    if status is not None and status not in STATUSES:
        raise Invalid([f"status must be one of {STATUSES}, got {shorten(status)}"])
    with ctx.reading() as s:
        return [PredictionView.of(p) for p in prediction_rows.list_predictions(
            s, tenant_id=caller.tenant_id, status=status, limit=limit, before=before)]


def events(ctx: Context, caller: Caller | None, prediction_id: str, *, after: int,
           limit: int) -> tuple[list[JobEvent], bool]:
    """(events after the event id ``after``, whether the prediction has finished);
    ``caller`` None: checked before (a stream's later polls)."""
    with ctx.reading() as s:
        job = _owned(s, caller, prediction_id).job
        return (job_rows.list_events(s, job_id=job.id, after_id=after, limit=limit),
                job.status in FINISHED)


def cancel(ctx: Context, caller: Caller, prediction_id: str) -> PredictionView:
    """A queued prediction, or a running one whose worker is gone (stale heartbeat), ends
    cancelled at once; a live one stops before its next batch of images."""
    stale_before = utcnow() - timedelta(seconds=ctx.settings.stale_after_seconds)
    with ctx.transaction() as s:
        prediction = _owned(s, caller, prediction_id)
        if prediction.job.status in FINISHED:
            raise Conflict(f"prediction {prediction_id} already finished with status "
                           f"{prediction.job.status!r}")
        job_rows.request_cancel(s, job_id=prediction_id, stale_before=stale_before)
        return PredictionView.of(prediction)


def results(ctx: Context, caller: Caller, prediction_id: str, fmt: str) -> bytes:
    """The result file (``jsonl`` or ``csv``) of a prediction that succeeded; ``Conflict``
    before that (or when it failed or was cancelled: it has none)."""
    if fmt not in FORMATS:
        raise Invalid([f"format must be one of {tuple(FORMATS)}, got {shorten(fmt)}"])
    with ctx.reading() as s:
        prediction = _owned(s, caller, prediction_id)
        status = prediction.job.status
        if status != JobStatus.succeeded.value:
            raise Conflict(f"prediction {prediction_id} is {status}: results exist once it "
                           "has succeeded" + ("" if status not in FINISHED else
                                              " (it will not: it has finished)"),
                           retry_after=None if status in FINISHED else 5)
        sha256 = prediction.results_csv_sha256 if fmt == "csv" \
            else prediction.results_jsonl_sha256
        data = get_blob(s, sha256=sha256)
    if data is None:
        raise NotFound("results of prediction", prediction_id)
    return data


# ---------------------------------------------------------------- result files


def result_row(name: str, sha256: str, answer: dict | None, error: str | None = None
               ) -> dict[str, Any]:
    """One image's line of the results: its name and blob, then what /v1/classify answers
    for it (label, unknown, top_k), or why it could not be read."""
    if answer is None:
        return {"name": name, "sha256": sha256, "label": None, "unknown": False, "top_k": [],
                "error": error}
    return {"name": name, "sha256": sha256, **answer, "error": None}


def result_files(rows: list[dict[str, Any]], top_k: int) -> tuple[bytes, bytes]:
    """(JSON Lines, CSV) of result rows: the CSV has name, sha256, label, unknown, error,
    then label_1, prob_1, ... label_k, prob_k."""
    jsonl = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()
    k = max((len(r["top_k"]) for r in rows), default=top_k)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["name", "sha256", "label", "unknown", "error",
                     *[f"{what}_{i}" for i in range(1, k + 1) for what in ("label", "prob")]])
    for row in rows:
        ranked = [cell for t in row["top_k"] for cell in (t["label"], t["prob"])]
        writer.writerow([row["name"], row["sha256"], row["label"] or "",
                         str(row["unknown"]).lower(), row["error"] or "",
                         *ranked, *[""] * (2 * k - len(ranked))])
    return jsonl, buf.getvalue().encode()


def counts_of(rows: list[dict[str, Any]]) -> dict[str, int]:
    return {"classified": sum(1 for r in rows if r["error"] is None),
            "unknown": sum(1 for r in rows if r["unknown"]),
            "unreadable": sum(1 for r in rows if r["error"] is not None)}

