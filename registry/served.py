"""What adapters answered, per hour (``served_stats``), and when an adapter's drift was last
reported (``drift_alerts``).

Keyword-only arguments; ``None`` when nothing is found; the caller owns the transaction."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Row, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from .models import HISTOGRAM_BUCKETS, DriftAlert, ServedStats

COUNTS = ("predictions", "unknown", "low_confidence", "captured")
_INSERTS = {"postgresql": postgresql_insert, "sqlite": sqlite_insert}


def add_served(session: Session, *, tenant_id: str, adapter_id: str, hour: datetime,
               predictions: int, unknown: int, low_confidence: int, captured: int,
               histogram: Sequence[int]) -> None:
    """Add counts to the adapter's hour, creating its row when absent. Several processes may
    add to one hour at once: the counts are added by the database (``INSERT ... ON CONFLICT
    DO UPDATE SET n = n + excluded.n``, one statement, atomic on PostgreSQL and SQLite),
    and that statement leaves the row this transaction's (locked on PostgreSQL; SQLite has
    one writer), so the histogram is then read and written back without a race. A caller
    adding several rows should add them in key order (two transactions then never wait on
    each other's rows in opposite orders)."""
    if len(histogram) != HISTOGRAM_BUCKETS:
        raise ValueError(f"a histogram has {HISTOGRAM_BUCKETS} buckets, not {len(histogram)}")
    table = ServedStats.__table__
    insert = _INSERTS[session.get_bind().dialect.name]
    statement = insert(table).values(
        tenant_id=tenant_id, adapter_id=adapter_id, hour=hour, predictions=predictions,
        unknown=unknown, low_confidence=low_confidence, captured=captured,
        histogram=[0] * HISTOGRAM_BUCKETS)
    session.execute(statement.on_conflict_do_update(
        index_elements=[table.c.tenant_id, table.c.adapter_id, table.c.hour],
        set_={name: table.c[name] + statement.excluded[name] for name in COUNTS}))
    key = (ServedStats.tenant_id == tenant_id, ServedStats.adapter_id == adapter_id,
           ServedStats.hour == hour)
    stored = session.execute(select(ServedStats.histogram).where(*key)
                             .with_for_update()).scalar_one()
    session.execute(update(ServedStats).where(*key).values(
        histogram=[int(a) + int(b) for a, b in zip(stored, histogram)]))


def served_hours(session: Session, *, tenant_id: str, adapter_ids: Sequence[str],
                 since: datetime) -> list[ServedStats]:
    """The adapters' hours from ``since`` on, by adapter, oldest hour first."""
    return list(session.scalars(select(ServedStats).where(
        ServedStats.tenant_id == tenant_id, ServedStats.adapter_id.in_(list(adapter_ids)),
        ServedStats.hour >= since).order_by(ServedStats.adapter_id, ServedStats.hour)))


def served_since(session: Session, *, since: datetime, min_predictions: int = 1
                 ) -> list[Row]:
    """Per adapter of any tenant with at least ``min_predictions`` answers in the hours from
    ``since`` on: (tenant_id, adapter_id, predictions, unknown, low_confidence, captured)."""
    total = func.sum(ServedStats.predictions)
    return list(session.execute(
        select(ServedStats.tenant_id, ServedStats.adapter_id, total.label("predictions"),
               *(func.sum(getattr(ServedStats, name)).label(name) for name in COUNTS[1:]))
        .where(ServedStats.hour >= since)
        .group_by(ServedStats.tenant_id, ServedStats.adapter_id)
        .having(total >= min_predictions)
        .order_by(ServedStats.tenant_id, ServedStats.adapter_id)))


def delete_served_before(session: Session, *, before: datetime) -> int:
    """Delete the hours before ``before``, and drift reports older than that; how many
    hours."""
    deleted = session.execute(delete(ServedStats).where(ServedStats.hour < before))
    session.execute(delete(DriftAlert).where(DriftAlert.fired_at < before))
    return deleted.rowcount or 0


def last_drift(session: Session, *, adapter_id: str) -> datetime | None:
    """When the adapter's drift was last reported (locked until the transaction ends)."""
    return session.scalar(select(DriftAlert.fired_at).where(DriftAlert.adapter_id == adapter_id)
                          .with_for_update())


def record_drift(session: Session, *, tenant_id: str, adapter_id: str,
                 fired_at: datetime) -> None:
    row = session.get(DriftAlert, adapter_id)
    if row is None:
        session.add(DriftAlert(adapter_id=adapter_id, tenant_id=tenant_id, fired_at=fired_at))
    else:
        row.fired_at = fired_at
    session.flush()
