"""What the service reports about itself: readiness of its dependencies and job counts."""

from __future__ import annotations

from sqlalchemy import text

from registry.blobstore import BlobStoreUnavailable
from registry.jobs import count_jobs_by_status

from .context import Context


def readiness(ctx: Context) -> dict[str, str]:
    """``ok`` or why not, for the database, the broker and the blob store (when the bytes
    are not in the database)."""
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
    if ctx.blobs is not None:
        try:
            ctx.blobs.check()
            checks["blob_store"] = "ok"
        except BlobStoreUnavailable:
            checks["blob_store"] = "unreachable"
    return checks


def job_counts(ctx: Context) -> dict[str, int]:
    """Jobs by status, of every tenant (for the operator's metrics)."""
    with ctx.reading() as s:
        return count_jobs_by_status(s)
