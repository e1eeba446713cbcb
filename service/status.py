"""What the service reports about itself: readiness of its dependencies and job counts."""

from __future__ import annotations

from sqlalchemy import text

from registry.jobs import count_jobs_by_status

from .context import Context


def readiness(ctx: Context) -> dict[str, str]:
    """``ok`` or why not, for the database and the broker."""
    checks = {}
    try:
        with ctx.reading() as s:
            s.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as e:  # noqa: BLE001 (reported as unreachable)
        checks["database"] = f"unreachable: {type(e).__name__}"
    try:
        ctx.queue.ping()
        checks["broker"] = "ok"
    except Exception as e:  # noqa: BLE001 (reported as unreachable)
        checks["broker"] = f"unreachable: {type(e).__name__}"
    return checks


def job_counts(ctx: Context) -> dict[str, int]:
    """Jobs by status, of every tenant (for the operator's metrics)."""
    with ctx.reading() as s:
        return count_jobs_by_status(s)
