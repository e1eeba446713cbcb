"""What an adapter (or every version of its name) served, hour by hour: how many answers,
the shares answered "unknown", of low confidence and captured, and a histogram of the top
probability, with the totals over the window and the held-out baseline they compare with.
Read from ``served_stats``, which each API process adds to every few seconds
(``service.served``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from registry import adapters as adapter_rows
from registry import served as served_rows
from registry.models import HISTOGRAM_BUCKETS, Adapter, utcnow

from .adapters import find
from .context import Caller, Context
from .drift import baseline
from .errors import Invalid
from .served import hour_of

MAX_HOURS = 90 * 24  # served_stats keeps 90 days


@dataclass
class Served:
    """Counts of one hour (``hour``), or of a window (``hour`` None)."""

    hour: datetime | None = None
    predictions: int = 0
    unknown: int = 0
    low_confidence: int = 0
    captured: int = 0
    histogram: list[int] = field(default_factory=lambda: [0] * HISTOGRAM_BUCKETS)

    def _share(self, n: int) -> float | None:
        return round(n / self.predictions, 4) if self.predictions else None

    @property
    def unknown_share(self) -> float | None:
        return self._share(self.unknown)

    @property
    def low_confidence_share(self) -> float | None:
        return self._share(self.low_confidence)

    @property
    def captured_share(self) -> float | None:
        return self._share(self.captured)

    def add(self, other: Served) -> None:
        self.predictions += other.predictions
        self.unknown += other.unknown
        self.low_confidence += other.low_confidence
        self.captured += other.captured
        self.histogram = [a + b for a, b in zip(self.histogram, other.histogram)]


@dataclass
class VersionServed:
    adapter_id: str
    name: str | None
    version: int | None
    baseline: dict[str, float | None]
    totals: Served
    hours: list[Served]


@dataclass
class AdapterServed:
    adapter_id: str
    hours: int
    since: datetime
    until: datetime
    versions: list[VersionServed]


def _versions(s, caller: Caller, adapter: Adapter, lineage: bool) -> list[Adapter]:
    if lineage and adapter.name:
        return adapter_rows.versions_of(s, tenant_id=caller.tenant_id, name=adapter.name)
    return [adapter]


def served(ctx: Context, caller: Caller, reference: str, *, hours: int = 24,
           lineage: bool = False, now: datetime | None = None) -> AdapterServed:
    """The adapter's (with ``lineage``: every version of its name) hours from the one
    ``hours - 1`` before the current hour to now; only hours with answers are listed."""
    if not 1 <= hours <= MAX_HOURS:
        raise Invalid([f"hours must be from 1 to {MAX_HOURS}, not {hours}"])
    now = now or utcnow()
    since = hour_of(now) - timedelta(hours=hours - 1)
    with ctx.reading() as s:
        adapter = find(s, caller, reference)
        versions = _versions(s, caller, adapter, lineage)
        rows = served_rows.served_hours(s, tenant_id=caller.tenant_id,
                                        adapter_ids=[v.id for v in versions], since=since)
    by_adapter: dict[str, list[Served]] = {v.id: [] for v in versions}
    for row in rows:
        by_adapter[row.adapter_id].append(Served(
            row.hour, row.predictions, row.unknown, row.low_confidence, row.captured,
            list(row.histogram)))
    out = []
    for version in versions:
        totals = Served()
        for hour in by_adapter[version.id]:
            totals.add(hour)
        out.append(VersionServed(version.id, version.name, version.version,
                                 baseline(version.config), totals, by_adapter[version.id]))
    return AdapterServed(adapter.id, hours, since, now, out)
