"""Retrain: the next version of a named adapter, warm-started from it, trained on its
training dataset plus the lineage's labelled captures (a new dataset version), with the
lineage's benchmark set kept out of training. Asked for by ``POST
/v1/adapters/{ref}/retrain``, or started by the label that makes ``retrain_after`` captures
wait (``service/captures.py``, in the label's transaction).

The benchmark set (``registry/benchmarks.py``) is filled by the lineage's first retrain with
the images its adapter's job held out (recomputed as the worker drew them), and then with
every fifth labelled capture, counted over the lineage; those captures never join a
dataset."""

from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from clipfit_core.config import AUTO, TrainConfig, prepare_training_set
from clipfit_core.data import FewShotDataset, Sample
from clipfit_core.prompts import shorten
from registry import adapters as adapter_rows
from registry import benchmarks as benchmark_rows
from registry import captures as capture_rows
from registry import datasets as dataset_rows
from registry import jobs as job_rows
from registry.benchmarks import NewBenchmarkImage
from registry.datasets import StoredImage
from registry.models import Adapter, Capture, CaptureSetting, Dataset, Job, JobStatus

from .adapters import find
from .capture_rules import ALIAS_PATTERN, PROMOTE
from .context import Caller, Context
from .datasets import version_limit_problems
from .errors import Conflict, DomainError, Invalid
from .jobs import resolved_spec, send, spec_problems
from .quotas import check_room

log = logging.getLogger(__name__)
INVALID_RETRAIN = "invalid retrain"
BENCHMARK_EVERY = 5  # every fifth labelled capture of a lineage joins its benchmark set
RACE = "another retrain of this adapter's name was started at the same time; retry"
ENDED = (JobStatus.failed.value, JobStatus.cancelled.value)
# the hyperparameters a retrain may override: the job form's, less the templates (a version
# keeps its parent's)
OVERRIDABLE = tuple(f.name for f in TrainConfig.exposed_fields() if f.name != "templates")


@dataclass
class RetrainRequest:
    """``promote`` (manual or auto) and ``alias`` are kept on the job for promotion;
    ``hyperparameters`` (spec field names) override the parent job's."""

    promote: str = "manual"
    alias: str | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    trigger: str = "request"  # or "labels": retrain_after was reached


def retrain(ctx: Context, caller: Caller, reference: str, request: RetrainRequest) -> Job:
    """Store the new dataset version, the benchmark images and the queued job in one
    transaction (or nothing, on any refusal), then send the job to the queue."""
    with ctx.transaction(conflict=RACE) as s:
        adapter = find(s, caller, reference)
        job = _store(s, _plan(s, ctx, adapter, request))
    send(ctx, job)
    return job


def start_if_due(s: Session, ctx: Context, setting: CaptureSetting | None) -> Job | None:
    """In a label's transaction: the retrain of ``setting``'s lineage when as many labelled
    captures wait as its ``retrain_after`` and no version of the name is being trained,
    warm-started from the newest version. A retrain that cannot start (no training dataset,
    over quota, ...) is logged and skipped: the labels are stored all the same. The caller
    sends the job once the transaction has committed."""
    if setting is None or setting.retrain_after is None:
        return None
    tenant, lineage = setting.tenant_id, setting.lineage
    if capture_rows.count_waiting(s, tenant_id=tenant, lineage=lineage) \
            < setting.retrain_after or job_rows.count_named_jobs_in_flight(
                s, tenant_id=tenant, name=lineage):
        return None
    adapter = adapter_rows.newest_version(s, tenant_id=tenant, name=lineage)
    if adapter is None:
        return None
    try:
        plan = _plan(s, ctx, adapter, RetrainRequest(promote=setting.promote,
                                                     trigger="labels"))
    except DomainError as e:
        log.warning("retrain of %r not started after %d labels: %s", lineage,
                    setting.retrain_after, e.message)
        return None
    return _store(s, plan)


def lock_for_labels(s: Session, setting: CaptureSetting | None) -> None:
    """Before a label's transaction locks its captures: when its labels may start a
    retrain, take the name's lock first, in the order a retrain takes it (no deadlock)."""
    if setting is not None and setting.retrain_after is not None:
        adapter_rows.lock_name(s, tenant_id=setting.tenant_id, name=setting.lineage)


@dataclass
class _Plan:
    adapter: Adapter
    base: Dataset  # the dataset version the new one builds on
    continues: Job | None  # a failed or cancelled retrain whose version it builds on
    training: list[Capture]
    benchmark: list[Capture]
    held_out: list[NewBenchmarkImage]
    classnames: list[str]
    benchmark_size: int  # the set's size with this retrain's images in it
    hyperparameters: dict[str, Any]
    templates: list[str]
    autos: list[str]
    request: RetrainRequest


def _plan(s: Session, ctx: Context, adapter: Adapter, request: RetrainRequest) -> _Plan:
    """Everything the retrain will store, read and checked; nothing written yet."""
    lineage, parent_job = adapter.name, adapter.job
    if lineage is None:
        raise Conflict(f"adapter {adapter.id} has no name, and a retrain makes the next "
                       "version of a name: train a named version from it first (POST "
                       f"/v1/jobs with name=NAME and parent_adapter_id={adapter.id}), then "
                       "retrain NAME@1")
    if parent_job is None or adapter.dataset_id is None:
        raise Conflict(f"adapter {lineage}@{adapter.version} was imported, so this server "
                       "has none of the images it was trained on: train a version here "
                       f"first (POST /v1/jobs with name={lineage}, parent_adapter_id="
                       f"{lineage}@{adapter.version} and your images), then retrain it")
    if adapter.base_model not in ctx.settings.allowed_base_models:
        raise Conflict(f"adapter {adapter.id}'s base model {shorten(adapter.base_model)} is "
                       "no longer allowed on this server")
    values, problems = _values(parent_job, request)
    problems += spec_problems(ctx.settings, values)
    if problems:
        raise Invalid(problems, INVALID_RETRAIN)
    tenant = adapter.tenant_id
    adapter_rows.lock_name(s, tenant_id=tenant, name=lineage)  # retrains take turns
    retrains = job_rows.retrain_jobs(s, tenant_id=tenant, lineage=lineage)
    last = retrains[-1] if retrains else None
    continues = last if last is not None and last.status in ENDED and \
        last.parent_adapter_id == adapter.id else None
    base = (continues or parent_job).dataset
    waiting = capture_rows.waiting_captures(s, tenant_id=tenant, lineage=lineage, lock=True)
    if not waiting and continues is None:
        raise Conflict(f"no new labelled captures for {shorten(lineage)}: label some "
                       f"(POST /v1/adapters/{lineage}@{adapter.version}/captures:label), "
                       "then retrain")
    taken = sum(j.retrain.get("added", 0) + j.retrain.get("benchmarked", 0)
                for j in retrains)
    training, benchmark = [], []
    for n, capture in enumerate(waiting, start=taken + 1):
        (benchmark if n % BENCHMARK_EVERY == 0 else training).append(capture)
    held_out = [] if retrains else held_out_split(s, parent_job)
    classnames = list(base.classnames)
    classnames += [c for c in dict.fromkeys(c.label for c in training) if c not in classnames]
    rows = dataset_rows.dataset_blobs(s, dataset_id=base.id) + [
        StoredImage(c.blob_sha256, classnames.index(c.label), c.filename) for c in training]
    problems += version_limit_problems(ctx.settings, images=len(rows),
                                       classes=len(classnames))
    if problems:
        raise Invalid(problems, INVALID_RETRAIN)
    held = benchmark_rows.benchmark_digests(s, tenant_id=tenant, lineage=lineage) \
        | {i.blob_sha256 for i in held_out} | {c.blob_sha256 for c in benchmark}
    # what the worker will train on, its images standing in by their blobs: the auto
    # values are resolved for it (split and shots as training draws them)
    trained = FewShotDataset(classnames, [Sample(r.blob_sha256, r.label, r.name)
                                          for r in rows if r.blob_sha256 not in held])
    hyperparameters, templates, autos = resolved_spec(ctx.settings, values, trained,
                                                      base_model=adapter.base_model)
    check_room(s, ctx.settings, tenant, new_job=True)
    size = benchmark_rows.benchmark_size(s, tenant_id=tenant, lineage=lineage)
    return _Plan(adapter=adapter, base=base, continues=continues, training=training,
                 benchmark=benchmark, held_out=held_out, classnames=classnames,
                 benchmark_size=size + len(held_out) + len(benchmark),
                 hyperparameters=hyperparameters, templates=templates, autos=autos,
                 request=request)


def _values(parent_job: Job, request: RetrainRequest) -> tuple[dict[str, Any], list[str]]:
    """The spec's values (field names): the parent job's, its ``auto`` fields ``auto`` again
    (resolved for the new training set), the request's overrides on top; and every problem
    with the request."""
    problems = []
    if request.promote not in PROMOTE:
        problems.append(f"promote: must be manual or auto, not {shorten(request.promote)}")
    if request.alias is not None and not re.fullmatch(ALIAS_PATTERN, request.alias):
        problems.append(f"alias: {shorten(request.alias)} is not an alias (a lowercase "
                        "letter, then up to 39 lowercase letters, digits, _ or -)")
    unknown = [k for k in request.hyperparameters if k not in OVERRIDABLE]
    if unknown:
        problems.append(f"hyperparameters: {', '.join(shorten(k) for k in unknown)} cannot "
                        f"be set on a retrain (these can: {', '.join(OVERRIDABLE)})")
    try:
        config = TrainConfig.from_dict(parent_job.hyperparameters,
                                       templates=parent_job.templates)
    except ValueError as e:
        raise Conflict(f"the parent job's settings are refused by this version: {e}") from e
    values = {f.name: getattr(config, f.name) for f in dataclasses.fields(TrainConfig)
              if not f.metadata["runtime"]}
    values |= dict.fromkeys(parent_job.auto or [], AUTO)
    values |= {k: v for k, v in request.hyperparameters.items() if k in OVERRIDABLE}
    return values, problems


def held_out_split(s: Session, job: Job) -> list[NewBenchmarkImage]:
    """The images ``job`` held out, recomputed as its worker drew them: its dataset in
    stored order, its ``val_fraction`` and ``seed`` (``prepare_training_set``). The split
    reads only the labels and the order, so the images stand in by their blobs."""
    config = TrainConfig.from_dict(job.hyperparameters, templates=job.templates)
    classnames = list(job.dataset.classnames)
    rows = dataset_rows.dataset_blobs(s, dataset_id=job.dataset_id)
    _, val = prepare_training_set(FewShotDataset(classnames, [
        Sample(r.blob_sha256, r.label, r.name) for r in rows]), config)
    images = {}  # one row per blob (the same bytes twice are one benchmark image)
    for sample in val.samples if val is not None else []:
        images.setdefault(sample.source, NewBenchmarkImage(
            sample.source, classnames[sample.label], "held_out"))
    return list(images.values())


def _store(s: Session, plan: _Plan) -> Job:
    adapter, tenant, lineage = plan.adapter, plan.adapter.tenant_id, plan.adapter.name
    benchmark_rows.add_benchmark_images(s, tenant_id=tenant, lineage=lineage, images=[
        *plan.held_out, *(NewBenchmarkImage(c.blob_sha256, c.label, "capture", c.id)
                          for c in plan.benchmark)])
    for capture in plan.benchmark:
        capture.benchmark = True
    dataset = plan.base
    if plan.training:
        dataset = dataset_rows.create_version(s, parent=plan.base, classnames=plan.classnames,
                                              stored=[StoredImage(
                                                  c.blob_sha256, plan.classnames.index(c.label),
                                                  c.filename) for c in plan.training])
        for capture in plan.training:
            capture.dataset_id = dataset.id
    request = plan.request
    job = job_rows.create_job(
        s, tenant_id=tenant, classnames=dataset.classnames, images=[], dataset=dataset,
        base_model=adapter.base_model, templates=plan.templates,
        hyperparameters=plan.hyperparameters, auto=plan.autos or None,
        parent_adapter_id=adapter.id, name=lineage, retrain={
            "lineage": lineage, "benchmark_images": plan.benchmark_size,
            "added": len(plan.training), "benchmarked": len(plan.benchmark),
            "held_out": len(plan.held_out), "promote": request.promote,
            "alias": request.alias, "trigger": request.trigger,
            "continues": plan.continues.id if plan.continues is not None else None})
    job.adapter_id  # noqa: B018 (loaded while the session is open)
    return job
