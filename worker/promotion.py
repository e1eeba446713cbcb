"""Compare and promote: a retrained version beside the version it continues and zero-shot on
its lineage's benchmark set (``clipfit_core.compare``), then, in the transaction that stores
it, the aliases moved when the job asked for ``promote: auto`` and the candidate is not worse,
a job event saying what was decided and why, and the ``adapter.version_ready`` webhook event
carrying the comparison.

Which aliases move: the job's ``alias`` when it named one (created if missing); otherwise
every alias of the name that pointed at the previous version when the version was stored
(an alias moved by hand meanwhile is left where it was put)."""

from __future__ import annotations

import logging
from typing import Any

import torch
from sqlalchemy.orm import Session

from clipfit_core.classify import Classifier
from clipfit_core.compare import version_comparison
from clipfit_core.delta import Delta
from registry import adapters as adapter_rows
from registry import benchmarks as benchmark_rows
from registry import crud
from registry.models import Adapter, Job
from registry.webhooks import enqueue_webhook_event

log = logging.getLogger(__name__)
EVENT = "adapter.version_ready"
CHUNK = 64  # benchmark images read and classified at a time


def compare(engine_session, base, job_id: str, delta: Delta) -> dict[str, Any] | None:
    """The comparison of a retrain job's new ``delta`` on the benchmark set it was trained
    without, or None for a job that is not a retrain. A previous version deleted meanwhile,
    or an empty set, gives a comparison with ``error`` instead of numbers: the version is
    stored all the same, and never promoted automatically."""
    with engine_session() as s:
        job = crud.get_job(s, job_id=job_id)
        retrain = job.retrain if job is not None else None
        if not retrain:
            return None
        parent = crud.get_adapter(s, adapter_id=job.parent_adapter_id, tenant_id=job.tenant_id) \
            if job.parent_adapter_id else None
        if parent is None:
            return {"error": "the previous version was deleted before the comparison",
                    "previous_adapter_id": job.parent_adapter_id, "not_worse": None}
        previous = Delta.from_bytes(crud.get_blob(s, sha256=parent.weights_sha256),
                                    parent.config)
        rows = [(r.blob_sha256, r.label) for r in benchmark_rows.benchmark_images(
            s, tenant_id=job.tenant_id, lineage=retrain["lineage"],
            size=retrain.get("benchmark_images"))]
        previous_id = parent.id
    classnames, templates = list(delta.config.classnames), list(delta.config.templates)
    index = {name: i for i, name in enumerate(classnames)}
    known = [(digest, index[label]) for digest, label in rows if label in index]
    result: dict[str, Any] = {"previous_adapter_id": previous_id,
                              "benchmark_images": len(rows),
                              "excluded_images": len(rows) - len(known)}
    if not known:
        return result | {"error": "the benchmark set holds no image of this version's "
                                  "classes", "not_worse": None}
    classifier = Classifier(base, batch_size=CHUNK)
    logits: dict[str, list] = {"candidate": [], "previous": [], "zero_shot": []}
    for start in range(0, len(known), CHUNK):  # bounded memory whatever the set's size
        chunk = known[start:start + CHUNK]
        with engine_session() as s:
            images = [crud.get_blob(s, sha256=digest) for digest, _ in chunk]
        for key, model in (("candidate", delta), ("previous", previous), ("zero_shot", None)):
            logits[key].append(classifier.logits(images, classnames, templates, model))
    labels = torch.tensor([label for _, label in known])
    report = version_comparison(torch.cat(logits["candidate"]), torch.cat(logits["previous"]),
                                torch.cat(logits["zero_shot"]), labels, classnames)
    log.info("job %s: benchmark %d images, candidate %.4f, previous %.4f, zero-shot %.4f",
             job_id, report["images"], report["candidate"]["accuracy"],
             report["previous"]["accuracy"], report["zero_shot"]["accuracy"])
    return result | report


def settle(s: Session, job: Job, adapter: Adapter, comparison: dict[str, Any] | None) -> None:
    """In the storing transaction: move the aliases the job's promotion asks for, record
    the decision as a job event, and queue ``adapter.version_ready``."""
    if comparison is None:
        return
    retrain = job.retrain or {}
    promote, wanted = retrain.get("promote", "manual"), retrain.get("alias")
    moved: list[str] = []
    if promote != "auto":
        decision = "manual: no alias moved (PUT /v1/aliases/{alias} moves one)"
    elif comparison.get("not_worse") is not True:
        decision = "not promoted: " + (comparison.get("error") or "worse than the previous "
                                       "version beyond the paired interval")
    else:
        previous_id = comparison.get("previous_adapter_id")
        if wanted:
            targets = [wanted]
        else:
            targets = [a.alias for a in adapter_rows.list_aliases(
                s, tenant_id=job.tenant_id, name=adapter.name) if a.adapter_id == previous_id]
        for alias in targets:
            adapter_rows.set_alias(s, tenant_id=job.tenant_id, name=adapter.name, alias=alias,
                                   adapter=adapter)
            moved.append(alias)
        decision = "promoted" if moved else "not worse, but no alias pointed at the " \
            "previous version"
    outcome = {"promote": promote, "decision": decision, "moved_aliases": moved}
    comparison["promotion"] = outcome
    adapter.metrics = {**adapter.metrics, "comparison": comparison}
    crud.add_event(s, job_id=job.id, kind="compared", payload={
        "adapter_id": adapter.id, "previous_adapter_id": comparison.get("previous_adapter_id"),
        "images": comparison.get("images", 0), **outcome,
        **{k: comparison[k] for k in ("vs_previous", "not_worse") if k in comparison}})
    enqueue_webhook_event(s, tenant_id=job.tenant_id, event_type=EVENT, data={
        "adapter_id": adapter.id, "name": adapter.name, "version": adapter.version,
        "job_id": job.id, **summary(comparison)})


def summary(comparison: dict[str, Any]) -> dict[str, Any]:
    """The comparison without its confusion matrices (the webhook's payload)."""
    out = {k: v for k, v in comparison.items()
           if k not in ("candidate", "previous", "zero_shot", "classnames")}
    out["accuracy"] = {k: comparison[k]["accuracy"] for k in ("candidate", "previous",
                                                               "zero_shot")
                       if isinstance(comparison.get(k), dict)}
    return out
