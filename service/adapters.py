"""The registry of trained deltas: look up by any reference (an id, ``name@VERSION`` or
``name@alias``), list, evaluation, download (the delta, or merged into its base), import
from elsewhere, delete."""

from __future__ import annotations

import io
import json
import logging
import shutil
import tempfile
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from clipfit_core.delta import CONFIG_NAME, WEIGHTS_NAME, Delta, DeltaError, check_compatible
from clipfit_core.export import read_delta_zip, write_open_clip, zip_directory
from clipfit_core.models import WeightsUnavailableError
from registry import adapters as adapter_rows
from registry import captures as capture_rows
from registry.blobs import get_blob
from registry.models import Adapter

from .context import Caller, Context
from .errors import Conflict, Invalid, NotFound, Unavailable, found
from .invalidation import Change
from .quotas import check_room

log = logging.getLogger(__name__)
INVALID_ADAPTER = "invalid adapter"
NO_WEIGHTS = "the base model's weights are not installed on this server; the operator's log " \
    "says more"
MISFIT = "this adapter does not fit the base model loaded here (its weights changed since it " \
    "was trained)"
EXPORTS = threading.BoundedSemaphore(1)  # a merged export holds a copy of the base: one at a time
IMPORTS = threading.BoundedSemaphore(2)  # reading and checking a zip: bounded work at once


@contextmanager
def base_model_errors() -> Iterator[None]:
    """A base that cannot load is ``Unavailable``; a delta that does not fit it, ``Conflict``."""
    try:
        yield
    except WeightsUnavailableError as e:
        log.warning("base model unavailable: %s", e)  # the path and how to fix it: operators'
        raise Unavailable(NO_WEIGHTS) from e
    except DeltaError as e:
        raise Conflict(MISFIT) from e


@dataclass(frozen=True)
class AdapterInfo:
    """What classification needs of an adapter row: kept with its delta, so that a cached
    adapter keeps answering while the database is away."""

    id: str
    tenant_id: str
    base_model: str
    classnames: list[str]
    templates: list[str]
    weights_sha256: str
    config: dict
    name: str | None = None

    @classmethod
    def of(cls, row: Adapter) -> AdapterInfo:
        return cls(row.id, row.tenant_id, row.base_model, list(row.classnames),
                   list(row.templates), row.weights_sha256, dict(row.config), row.name)


def find(s: Session, caller: Caller, reference: str) -> Adapter:
    """The caller's adapter by id, ``name@VERSION`` or ``name@alias``."""
    return found(adapter_rows.resolve_adapter(s, tenant_id=caller.tenant_id,
                                              reference=reference), "adapter", reference)


def get(ctx: Context, caller: Caller, reference: str) -> Adapter:
    with ctx.reading() as s:
        return find(s, caller, reference)


def list_adapters(ctx: Context, caller: Caller, *, limit: int, before=None) -> list[Adapter]:
    with ctx.reading() as s:
        return adapter_rows.list_adapters(s, tenant_id=caller.tenant_id, limit=limit,
                                          before=before)


def evaluation(ctx: Context, caller: Caller, reference: str) -> tuple[Adapter, dict, dict | None]:
    """(adapter, its evaluation report, its calibration), computed once by the worker; not
    found for an adapter trained without a held-out split or before reports existed."""
    adapter = get(ctx, caller, reference)
    if not adapter.config.get("evaluation"):
        raise NotFound("adapter", reference, f"adapter {adapter.id} has no evaluation report: "
                       "it kept no held-out images (val_fraction 0) or predates reports")
    return adapter, adapter.config["evaluation"], adapter.config.get("calibration")


def delta_zip(ctx: Context, caller: Caller, reference: str) -> tuple[Adapter, bytes]:
    """The adapter's two delta files, zipped (as ``import_adapter`` reads them back)."""
    with ctx.reading() as s:
        adapter = find(s, caller, reference)
        weights = get_blob(s, sha256=adapter.weights_sha256)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(WEIGHTS_NAME, weights)
        z.writestr(CONFIG_NAME, json.dumps(adapter.config, indent=2, sort_keys=True) + "\n")
    return adapter, buf.getvalue()


@dataclass
class Export:
    """A merged open_clip export on disk: send ``path``, then ``cleanup()``."""

    adapter: Adapter
    path: Path
    folder: Path

    def cleanup(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def open_clip_export(ctx: Context, caller: Caller, reference: str) -> Export:
    """The base with the delta merged, as open_clip's files in a zip (seconds of work; one
    at a time, no database connection held meanwhile)."""
    with ctx.reading() as s:
        adapter = find(s, caller, reference)
        weights = get_blob(s, sha256=adapter.weights_sha256)
    if not EXPORTS.acquire(blocking=False):
        raise Unavailable("another merged export is being written; retry shortly",
                          retry_after=10)
    export = Export(adapter, Path(), Path(tempfile.mkdtemp(prefix="clipfit-export-")))
    try:
        with base_model_errors():
            base = ctx.inference.base(adapter.base_model)
            write_open_clip(base, Delta.from_bytes(weights, adapter.config),
                            export.folder / "model")
        export.path = zip_directory(export.folder / "model", export.folder / "export.zip")
        shutil.rmtree(export.folder / "model")  # only the zip stays on disk while it is sent
    except BaseException:
        export.cleanup()
        raise
    finally:
        EXPORTS.release()
    return export


def import_adapter(ctx: Context, caller: Caller, data: bytes, name: str | None) -> Adapter:
    """A delta zip from elsewhere, checked before anything is stored: the zip (two files,
    sizes), the method, class names and templates, the stored report and calibration, the
    base model (allowed here), and the tensors against that base with its fingerprint."""
    if name is not None and len(name) > 200:
        raise Invalid(["name: at most 200 characters"], INVALID_ADAPTER)
    delta = _checked_import(ctx, data)
    with ctx.transaction() as s:
        check_room(s, ctx.settings, caller.tenant_id, new_job=False)
        return adapter_rows.import_adapter(s, tenant_id=caller.tenant_id,
                                           weights=delta.to_bytes(),
                                           config=delta.config_dict(), name=name)


def _checked_import(ctx: Context, data: bytes) -> Delta:
    if not IMPORTS.acquire(timeout=30):
        raise Unavailable("other imports are being checked; retry shortly", retry_after=5)
    try:
        try:  # the zip, then every rule of its config, before the tensors are read
            delta = read_delta_zip(data, allowed_base_models=ctx.settings.allowed_base_models,
                                   max_classes=ctx.settings.max_classes)
        except DeltaError as e:
            raise Invalid(e.problems, INVALID_ADAPTER) from e
        config = delta.config_dict()
        with base_model_errors():  # loading the base (first use) takes a while
            base = ctx.inference.base(config["base_model"])
        try:
            check_compatible(base, delta)
        except DeltaError as e:  # here the upload's fault, not the server's
            raise Invalid([str(e)], INVALID_ADAPTER) from e
        return delta
    finally:
        IMPORTS.release()


def delete(ctx: Context, caller: Caller, reference: str) -> None:
    """Refused while an alias points at it (move or delete the alias first)."""
    with ctx.transaction(conflict="an alias was pointed at this adapter meanwhile: move or "
                         "delete the alias first") as s:
        adapter = find(s, caller, reference)
        pointing = adapter_rows.aliases_of(s, adapter_id=adapter.id)
        if pointing:
            names = ", ".join(f"{a.name}@{a.alias}" for a in pointing[:5])
            raise Conflict(f"{names} point(s) at this adapter: move or delete the alias first")
        adapter_rows.delete_adapter(s, adapter_id=adapter.id, tenant_id=caller.tenant_id)
        if adapter.name is None:  # nothing continues its lineage: its captures go with it
            capture_rows.delete_lineage_captures(s, tenant_id=caller.tenant_id,
                                                 lineage=adapter.id)
    # gone from every API process's caches: here at once, elsewhere within the bound
    ctx.invalidation.changed(Change("adapter", adapter.id, caller.tenant_id))

