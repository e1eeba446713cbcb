"""Capture and review: which classified images of an adapter's lineage are kept (the
settings, set by a ``train`` key), and the review of what was kept: list, look, label with
one of the adapter's classes or a new class, or discard; one at a time or many at once, all
or nothing. The label that makes ``retrain_after`` labelled captures wait starts a retrain
in its transaction (``service/retrain.py``). Everything is the caller's tenant's only
(another tenant's captures are not found)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from clipfit_core.prompts import classname_problems, shorten
from registry import captures as capture_rows
from registry.captures import CaptureFilter
from registry.models import Adapter, Capture, CaptureSetting, utcnow

from . import retrain
from .adapters import find
from .capture_rules import DEFAULT_RETENTION_DAYS, rules_from
from .capture_writer import lineage_of
from .context import Caller, Context
from .errors import Invalid, found
from .invalidation import Change
from .jobs import send

INVALID_CAPTURE = "invalid capture settings"
INVALID_LABELS = "invalid labels"
MAX_LABELS = 500  # items per bulk request


@dataclass
class CaptureSettingsView:
    adapter_id: str
    lineage: str
    enabled: bool
    alias: str | None = None
    sample_rate: float | None = None
    below_confidence: float | None = None
    unknown: bool = False
    classes: list[str] = field(default_factory=list)
    max_per_hour: int | None = None
    max_per_day: int | None = None
    retention_days: int = DEFAULT_RETENTION_DAYS
    retrain_after: int | None = None
    promote: str = "manual"
    updated_at: datetime | None = None


def _view(adapter: Adapter, row: CaptureSetting | None) -> CaptureSettingsView:
    view = CaptureSettingsView(adapter_id=adapter.id, lineage=lineage_of(adapter),
                               enabled=row is not None)
    if row is not None:
        for name in ("alias", "sample_rate", "below_confidence", "unknown", "max_per_hour",
                     "max_per_day", "retention_days", "retrain_after", "promote",
                     "updated_at"):
            setattr(view, name, getattr(row, name))
        view.classes = list(row.classes or [])
    return view


def get_settings(ctx: Context, caller: Caller, reference: str) -> CaptureSettingsView:
    """The lineage's capture settings (``enabled`` false: nothing is captured)."""
    with ctx.reading() as s:
        adapter = find(s, caller, reference)
        return _view(adapter, capture_rows.get_capture_settings(
            s, tenant_id=caller.tenant_id, lineage=lineage_of(adapter)))


def set_settings(ctx: Context, caller: Caller, reference: str, values: dict[str, Any]
                 ) -> CaptureSettingsView:
    """Turn capture on for the adapter's lineage with these rules (replacing any before).
    Every problem with them is named in one ``Invalid``."""
    with ctx.transaction(conflict="the capture settings changed concurrently; retry") as s:
        adapter = find(s, caller, reference)
        rules, problems = rules_from(values, list(adapter.classnames),
                                     named=adapter.name is not None)
        if problems:
            raise Invalid(problems, INVALID_CAPTURE)
        row = capture_rows.put_capture_settings(s, tenant_id=caller.tenant_id,
                                                lineage=lineage_of(adapter),
                                                values=rules.columns())
        view = _view(adapter, row)
    ctx.invalidation.changed(Change("capture_rules", view.lineage, caller.tenant_id))
    return view


def disable(ctx: Context, caller: Caller, reference: str) -> None:
    """Stop capturing for the adapter's lineage (what was captured stays until it expires)."""
    with ctx.transaction() as s:
        lineage = lineage_of(find(s, caller, reference))
        capture_rows.delete_capture_settings(s, tenant_id=caller.tenant_id, lineage=lineage)
    ctx.invalidation.changed(Change("capture_rules", lineage, caller.tenant_id))


def list_captures(ctx: Context, caller: Caller, reference: str, *, limit: int,
                  before: tuple[datetime, str] | None = None, rule: str | None = None,
                  predicted: str | None = None, min_confidence: float | None = None,
                  max_confidence: float | None = None, state: str | None = None
                  ) -> list[Capture]:
    """The lineage's captures (every version's), newest first, filtered."""
    with ctx.reading() as s:
        adapter = find(s, caller, reference)
        return capture_rows.list_captures(
            s, tenant_id=caller.tenant_id, lineage=lineage_of(adapter), now=utcnow(),
            where=CaptureFilter(rule=rule, predicted=predicted, min_confidence=min_confidence,
                                max_confidence=max_confidence, state=state),
            limit=limit, before=before)


def _capture(s, caller: Caller, adapter: Adapter, capture_id: str, *, lock: bool = False
             ) -> Capture:
    captures = capture_rows.get_captures(s, tenant_id=caller.tenant_id,
                                         lineage=lineage_of(adapter), ids=[capture_id],
                                         now=utcnow(), lock=lock)
    return found(captures.get(capture_id), "capture", capture_id)


def get_capture(ctx: Context, caller: Caller, reference: str, capture_id: str) -> Capture:
    with ctx.reading() as s:
        return _capture(s, caller, find(s, caller, reference), capture_id)


def capture_image(ctx: Context, caller: Caller, reference: str, capture_id: str
                  ) -> tuple[bytes, str]:
    """The captured image's bytes, as classify received them, and its content type."""
    with ctx.reading() as s:
        capture = _capture(s, caller, find(s, caller, reference), capture_id)
        data = capture_rows.capture_image(s, capture=capture)
        return found(data, "capture image", capture_id), capture.media_type


@dataclass
class LabelItem:
    """A reviewer's verdict on one capture: a ``label`` (one of the adapter's classes, or a
    new class with ``new_class``), or ``discard``."""

    id: str
    label: str | None = None
    new_class: bool = False
    discard: bool = False


def _problem(item: LabelItem, capture: Capture, classnames: list[str]) -> str | None:
    if capture.dataset_id is not None or capture.benchmark:
        where = f"dataset version {capture.dataset_id}" if capture.dataset_id \
            else "the benchmark set"
        return f"a retrain took this capture into {where}: its label can no longer change"
    if item.discard:
        if item.label is not None or item.new_class:
            return "give a label or discard: true, not both"
        return None
    if item.label is None:
        return "give a label (new_class: true for a class the adapter lacks) or discard: true"
    if item.label in classnames:
        return None
    if item.new_class:
        problems = classname_problems([item.label])
        return f"label: {problems[0]}" if problems else None
    return (f"label {shorten(item.label)} is not a class of the adapter (its classes: "
            f"{', '.join(shorten(c) for c in classnames[:20])}); send new_class: true to add "
            "it as a new class")


def _apply(capture: Capture, item: LabelItem, classnames: list[str], now: datetime) -> None:
    if item.discard:
        capture.state, capture.label, capture.new_class = "discarded", None, False
    else:
        capture.state, capture.label = "labelled", item.label
        capture.new_class = item.label not in classnames
    capture.labelled_at = now


def _retrain_setting(s, caller: Caller, adapter: Adapter) -> CaptureSetting | None:
    """The lineage's settings when its labels may start a retrain (the name is then locked
    before any capture is)."""
    setting = capture_rows.get_capture_settings(s, tenant_id=caller.tenant_id,
                                                lineage=lineage_of(adapter))
    if setting is None or setting.retrain_after is None or adapter.name is None:
        return None
    retrain.lock_for_labels(s, setting)
    return setting


def label_capture(ctx: Context, caller: Caller, reference: str, item: LabelItem) -> Capture:
    """Label or discard one capture (again, if it was reviewed before)."""
    with ctx.transaction(conflict=retrain.RACE) as s:
        adapter = find(s, caller, reference)
        setting = _retrain_setting(s, caller, adapter)
        capture = _capture(s, caller, adapter, item.id, lock=True)
        classnames = list(adapter.classnames)
        if problem := _problem(item, capture, classnames):
            raise Invalid([problem], INVALID_LABELS)
        _apply(capture, item, classnames, utcnow())
        s.flush()
        job = retrain.start_if_due(s, ctx, setting)
    if job is not None:
        send(ctx, job)
    return capture


def label_captures(ctx: Context, caller: Caller, reference: str, items: list[LabelItem]
                   ) -> list[Capture]:
    """Label or discard many captures, all or none: every bad item is named in one
    ``Invalid`` (unknown captures too, and another tenant's look the same)."""
    if not items or len(items) > MAX_LABELS:
        raise Invalid([f"items: give 1 to {MAX_LABELS} captures, not {len(items)}"],
                      INVALID_LABELS)
    with ctx.transaction(conflict=retrain.RACE) as s:
        adapter = find(s, caller, reference)
        setting = _retrain_setting(s, caller, adapter)
        classnames = list(adapter.classnames)
        captures = capture_rows.get_captures(s, tenant_id=caller.tenant_id,
                                             lineage=lineage_of(adapter),
                                             ids=[i.id for i in items], now=utcnow(), lock=True)
        problems, seen = [], set()
        for n, item in enumerate(items):
            if item.id not in captures:
                problems.append(f"items[{n}]: capture {shorten(item.id)} not found")
            elif item.id in seen:
                problems.append(f"items[{n}]: capture {item.id} is named twice")
            elif problem := _problem(item, captures[item.id], classnames):
                problems.append(f"items[{n}]: {problem}")
            seen.add(item.id)
        if problems:
            raise Invalid(problems, INVALID_LABELS)
        now = utcnow()
        for item in items:
            _apply(captures[item.id], item, classnames, now)
        s.flush()
        job = retrain.start_if_due(s, ctx, setting)
    if job is not None:
        send(ctx, job)
    return [captures[item.id] for item in items]

