"""Served counts in the database, on PostgreSQL and SQLite: processes flushing the same hour
add up, a flush while the database is away keeps the counts (bounded) for the next one, old
hours age out, and one process at a time checks drift."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import sessionmaker

from registry import served as served_rows
from registry.db import make_engine
from registry.models import ServedStats, utcnow
from registry.settings import Settings
from service import served
from service.drift import check_once
from service.served import ServedCounts, hour_of


def _url(engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def _answer(prob: float, unknown: bool = False) -> dict:
    return {"label": "unknown" if unknown else "a", "unknown": unknown,
            "top_k": [{"label": "a", "prob": prob}]}


def _rows(engine, adapter_id: str) -> list[ServedStats]:
    with sessionmaker(engine)() as s:
        return list(s.scalars(select(ServedStats).where(ServedStats.adapter_id == adapter_id)
                              .order_by(ServedStats.hour)))


def test_two_processes_flushing_the_same_hour_add_up(migrated):
    """Two flushers (each with its own engine, as two API replicas) flush the same
    adapter-hour at the same moments, many times: every count arrives, none overwritten."""
    url, adapter, hour = _url(migrated), uuid.uuid4().hex, hour_of(utcnow())
    engines = [make_engine(url) for _ in range(2)]
    flushers = [ServedCounts(Settings(database_url=url), sessionmaker(e)) for e in engines]
    rounds, start = 15, threading.Barrier(2)
    failures = []

    def replica(counts: ServedCounts, prob: float) -> None:
        for _ in range(rounds):
            counts.record(tenant_id="t", adapter_id=adapter, now=hour, captured=1,
                          answers=[_answer(prob), _answer(prob / 2, unknown=True)])
            start.wait()  # both flush together: the same row, at the same time
            if not counts.flush():
                failures.append("a flush failed")

    threads = [threading.Thread(target=replica, args=(flushers[0], 0.95)),
               threading.Thread(target=replica, args=(flushers[1], 0.45))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not failures
    [row] = _rows(migrated, adapter)
    assert row.hour == hour and row.tenant_id == "t"
    # per round and replica: 2 answers, 1 unknown, 1 captured; low confidence: the second
    # answer of both (0.475, 0.225) and the first of the second replica (0.45)
    assert (row.predictions, row.unknown, row.captured, row.low_confidence) == \
        (4 * rounds, 2 * rounds, 2 * rounds, 3 * rounds)
    # buckets: 0.95 -> 9, 0.475 -> 4, 0.45 -> 4, 0.225 -> 2
    assert row.histogram == [0, 0, rounds, 0, 2 * rounds, 0, 0, 0, 0, rounds]
    for e in engines:
        e.dispose()


def test_add_served_inserts_then_adds(session):
    adapter, hour = uuid.uuid4().hex, hour_of(utcnow())
    for n in (3, 4):
        served_rows.add_served(session, tenant_id="t", adapter_id=adapter, hour=hour,
                               predictions=n, unknown=1, low_confidence=2, captured=0,
                               histogram=[n] + [0] * 9)
    row = session.scalar(select(ServedStats).where(ServedStats.adapter_id == adapter))
    session.refresh(row)
    assert (row.predictions, row.unknown, row.low_confidence, row.captured) == (7, 2, 4, 0)
    assert row.histogram == [7] + [0] * 9
    with pytest.raises(ValueError, match="10 buckets"):
        served_rows.add_served(session, tenant_id="t", adapter_id=adapter, hour=hour,
                               predictions=1, unknown=0, low_confidence=0, captured=0,
                               histogram=[1])


def test_a_flush_while_the_database_is_away_keeps_the_counts(migrated, monkeypatch):
    url, adapter = _url(migrated), uuid.uuid4().hex
    away = create_engine("postgresql+psycopg://postgres@127.0.0.1:1/none",
                         connect_args={"connect_timeout": 2})
    counts = ServedCounts(Settings(database_url=url), sessionmaker(away))
    monkeypatch.setattr(served, "MAX_PENDING", 3)
    now = hour_of(utcnow())
    hours = [now - timedelta(hours=h) for h in (4, 3, 2, 1)]
    for hour in hours[:2]:
        counts.record(tenant_id="t", adapter_id=adapter, answers=[_answer(0.9)], now=hour)
    assert counts.flush() is False and counts.flush_failures == 1
    for hour in hours[2:]:  # counted meanwhile: now 4 adapter-hours, one over the bound
        counts.record(tenant_id="t", adapter_id=adapter, answers=[_answer(0.9)], now=hour)
    counts.record(tenant_id="t", adapter_id=adapter, answers=[_answer(0.2)] * 2,
                  now=hours[-1])
    assert counts.dropped == 1  # the oldest hour
    assert counts.flush() is False and counts.flush_failures == 2 and counts.dropped == 1
    counts.sessions = sessionmaker(migrated)  # the database is back
    assert counts.flush() is True
    rows = _rows(migrated, adapter)
    assert [(r.hour, r.predictions, r.low_confidence) for r in rows] == \
        [(hours[1], 1, 0), (hours[2], 1, 0), (hours[3], 3, 2)]
    assert counts.flush() is True and _rows(migrated, adapter)[-1].predictions == 3  # once
    # the totals for /metrics count everything this process answered, dropped hours too
    assert counts.totals()[adapter].predictions == 6
    away.dispose()


def test_closing_flushes_and_old_hours_age_out(migrated):
    url, adapter = _url(migrated), uuid.uuid4().hex
    counts = ServedCounts(Settings(database_url=url), sessionmaker(migrated))
    now = utcnow()
    old = hour_of(now - timedelta(days=served.RETENTION_DAYS, hours=1))
    counts.record(tenant_id="t", adapter_id=adapter, answers=[_answer(0.7)], now=old)
    counts.record(tenant_id="t", adapter_id=adapter, answers=[_answer(0.7)], now=now)
    counts.close()  # no thread was started: closing flushes all the same
    assert len(_rows(migrated, adapter)) == 2
    assert counts.delete_old(now) >= 1
    assert [r.hour for r in _rows(migrated, adapter)] == [hour_of(now)]


def test_one_process_at_a_time_checks_drift(migrated):
    url, lease = _url(migrated), f"drift-{uuid.uuid4().hex[:8]}"
    settings, sessions = Settings(database_url=url), sessionmaker(migrated)
    assert check_once(sessions, settings, holder="a", lease=lease) is not None
    assert check_once(sessions, settings, holder="b", lease=lease) is None  # a holds it
    assert check_once(sessions, settings, holder="a", lease=lease) is not None  # renewed
