"""Capture rules: which classified images of an adapter lineage are kept for review. Checked
per image against the answer the caller got, in the order of ``RULES`` (the first that fires
is recorded): answered unknown, top probability below a confidence, predicted one of some
classes, and a random sample. The settings also say when labelled captures start a retrain
(``retrain_after``, ``promote``: ``service/retrain.py``)."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, fields
from typing import Any

from clipfit_core.prompts import shorten
from registry.models import CAPTURE_RULES

RULES = CAPTURE_RULES  # unknown, below_confidence, classes, sample_rate
ALIAS_PATTERN = r"[a-z][a-z0-9_-]{0,39}"  # as /v1/aliases/{alias} takes them
MAX_PER_HOUR = 100_000
MAX_PER_DAY = 1_000_000
MAX_RETENTION_DAYS = 365
DEFAULT_RETENTION_DAYS = 30
MAX_RETRAIN_AFTER = 100_000
PROMOTE = ("manual", "auto")  # what promotion of a retrained version does


@dataclass(frozen=True)
class CaptureRules:
    """A lineage's settings, as stored (``registry.models.CaptureSetting``'s columns)."""

    alias: str | None = None
    sample_rate: float | None = None
    below_confidence: float | None = None
    unknown: bool = False
    classes: tuple[str, ...] | None = None
    max_per_hour: int | None = None
    max_per_day: int | None = None
    retention_days: int = DEFAULT_RETENTION_DAYS
    retrain_after: int | None = None  # labelled captures waiting that start a retrain
    promote: str = "manual"  # of such a retrain

    @classmethod
    def of(cls, row) -> CaptureRules:
        values = {f.name: getattr(row, f.name) for f in fields(cls)}
        values["classes"] = tuple(row.classes) if row.classes else None
        return cls(**values)

    def columns(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["classes"] = list(self.classes) if self.classes else None
        return values

    def applies_to(self, reference: str) -> bool:
        """Whether a classify request that named the adapter ``reference`` is captured: with
        an ``alias``, only requests through ``name@alias``."""
        return self.alias is None or ("@" in reference
                                      and reference.rpartition("@")[2] == self.alias)

    def fired(self, answer: dict, draw: float | None = None) -> str | None:
        """The first rule that keeps this answer (a classify prediction: ``label``,
        ``unknown``, ``top_k``), or None. ``draw`` is the sample's random number."""
        confidence = answer["top_k"][0]["prob"] if answer["top_k"] else 0.0
        if self.unknown and answer.get("unknown"):
            return "unknown"
        if self.below_confidence is not None and confidence < self.below_confidence:
            return "below_confidence"
        if self.classes and not answer.get("unknown") and answer["label"] in self.classes:
            return "classes"
        if self.sample_rate and (random.random() if draw is None else draw) < self.sample_rate:
            return "sample_rate"
        return None


def rules_from(values: dict[str, Any], classnames: list[str], *, named: bool
               ) -> tuple[CaptureRules | None, list[str]]:
    """The rules of a request body (``None`` for what it leaves out), or every problem with
    it: values out of bounds, classes that are not the adapter's, no rule that can fire."""
    problems = []

    def bounded(name: str, low: float, high: float, kind: type = float) -> None:
        value = values.get(name)
        if value is None:
            return
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            problems.append(f"{name}: must be a whole number, not {shorten(value)}")
        elif not low <= value <= high:
            problems.append(f"{name}: must be between {low} and {high}, not {value}")

    bounded("sample_rate", 0, 1)
    bounded("below_confidence", 0, 1)
    bounded("max_per_hour", 0, MAX_PER_HOUR, int)
    bounded("max_per_day", 0, MAX_PER_DAY, int)
    bounded("retention_days", 1, MAX_RETENTION_DAYS, int)
    bounded("retrain_after", 1, MAX_RETRAIN_AFTER, int)
    if values.get("retrain_after") is not None and not named:
        problems.append("retrain_after: this adapter has no name, and a retrain makes the next "
                        "version of a name; leave it out, or train a named version first")
    promote = values.get("promote")
    if promote is not None and promote not in PROMOTE:
        problems.append(f"promote: must be manual or auto, not {shorten(promote)}")
    classes = values.get("classes")
    if classes is not None:
        unknown = [c for c in classes if c not in classnames]
        if unknown:
            problems.append("classes: not classes of the adapter: "
                            + ", ".join(shorten(c) for c in unknown[:10])
                            + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else "")
                            + f" (its classes: {', '.join(shorten(c) for c in classnames[:20])})")
        if len(set(classes)) != len(classes):
            problems.append("classes: a class is named twice")
    alias = values.get("alias")
    if alias is not None:
        if not named:
            problems.append("alias: this adapter has no name, so no aliases; capture all its "
                            "requests (leave alias out) or name it")
        elif not re.fullmatch(ALIAS_PATTERN, alias):
            problems.append(f"alias: {shorten(alias)} is not an alias (a lowercase letter, "
                            "then up to 39 lowercase letters, digits, _ or -)")
    if not (values.get("sample_rate") or values.get("below_confidence")
            or values.get("unknown") or classes):
        problems.append("no rule can fire: give sample_rate > 0, below_confidence > 0, "
                        "unknown: true or classes (to stop capturing, DELETE the setting)")
    if problems:
        return None, problems
    return CaptureRules(
        alias=alias, sample_rate=values.get("sample_rate"),
        below_confidence=values.get("below_confidence"), unknown=bool(values.get("unknown")),
        classes=tuple(classes) if classes else None, max_per_hour=values.get("max_per_hour"),
        max_per_day=values.get("max_per_day"),
        retention_days=values.get("retention_days") or DEFAULT_RETENTION_DAYS,
        retrain_after=values.get("retrain_after"), promote=promote or "manual"), []
