"""Content-addressed bytes (sha256): images, delta weights and results, stored once.

A ``blobs`` row says a blob exists (its size, when a writer last stored or named it); its
bytes live in the database's blob store (``registry.blobstore``: a folder, an S3 bucket),
or in the row itself where none is configured and for rows stored before one was.

The rules that keep a row from ever naming missing bytes, whatever crashes when:
- a writer upserts the row (taking its lock, refreshing ``touched_at``) *before* it writes
  the bytes, and the rows that name the blob come after, in the same transaction;
- bytes are deleted only by ``collect_garbage``, for rows nothing names that nobody touched
  for a grace period, under the rows' locks, before those rows are deleted; bytes in the
  store with no row at all (a writer that crashed before committing) are first adopted as
  rows with their own write time, so they wait out the same grace period.

Keyword-only arguments; ``None`` when nothing is found; the caller owns the transaction
(except the collector and the mover below, which commit as they go)."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import islice
from weakref import WeakKeyDictionary

from sqlalchemy import Engine, delete, exists, func, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.orm import InstrumentedAttribute, Session

from .blobstore import BlobMissing, BlobStore, blob_url, open_blob_store
from .models import (
    Adapter,
    BenchmarkImage,
    Blob,
    Capture,
    DatasetImage,
    Prediction,
    PredictionImage,
    utcnow,
)
from .settings import Settings

# every column that names a blob: a blob none of them names is garbage (after the grace)
NAMING_COLUMNS: list[InstrumentedAttribute] = [
    DatasetImage.blob_sha256, Adapter.weights_sha256, Capture.blob_sha256,
    BenchmarkImage.blob_sha256, PredictionImage.blob_sha256,
    Prediction.results_jsonl_sha256, Prediction.results_csv_sha256]
ROWS_PER_STATEMENT = 500

# ---------------------------------------------------------------- which store, per database

_stores: dict[str, BlobStore | None] = {}
_by_engine: WeakKeyDictionary[Engine, BlobStore | None] = WeakKeyDictionary()
_lock = threading.Lock()


def _database_key(url) -> str:
    return make_url(url).render_as_string(hide_password=False)


def use_blob_store(settings: Settings) -> BlobStore | None:
    """In this process, the blobs of the settings' database live in the settings' store
    (None: in the database); that store. Called by each front door; the same settings
    again give the same store object."""
    key = _database_key(settings.sqlalchemy_url)
    with _lock:
        current = _stores.get(key)
        if key in _stores and (current.location if current else "database") == \
                blob_url(settings):
            return current
    store = open_blob_store(settings)
    with _lock:
        _stores[key] = store
        _by_engine.clear()
    return store


def blob_store(session: Session) -> BlobStore | None:
    """The store of the session's database (None: bytes in the database)."""
    bind = session.get_bind()
    engine = getattr(bind, "engine", bind)
    try:
        return _by_engine[engine]
    except KeyError:
        pass
    with _lock:
        store = _stores.get(_database_key(engine.url))
        _by_engine[engine] = store
    return store


# ---------------------------------------------------------------- writing and reading

def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _insert(session: Session):
    """The dialect's INSERT (both have ON CONFLICT)."""
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(Blob)


def _upsert_rows(session: Session, blobs: dict[str, bytes], *, keep_bytes: bool) -> None:
    """Insert the rows or, where they exist, refresh ``touched_at`` (and lock them); with
    ``keep_bytes``, a row whose bytes were elsewhere takes them in."""
    now = utcnow()
    items = sorted(blobs.items())  # one lock order for every writer: no deadlocks
    for start in range(0, len(items), ROWS_PER_STATEMENT):
        rows = [{"sha256": sha256, "size": len(data), "data": data if keep_bytes else None,
                 "created_at": now, "touched_at": now}
                for sha256, data in items[start:start + ROWS_PER_STATEMENT]]
        statement = _insert(session).values(rows)
        changes = {"touched_at": now}
        if keep_bytes:
            changes["data"] = func.coalesce(Blob.data, statement.excluded.data)
        session.execute(statement.on_conflict_do_update(index_elements=[Blob.sha256],
                                                        set_=changes))


def put_blobs(session: Session, *, data: Sequence[bytes]) -> list[str]:
    """Store each of ``data`` once (by sha256); their digests, in order. The rows first,
    then the bytes (in parallel where the store allows): a crash between them leaves bytes
    nothing names, never a name without bytes."""
    digests = [_digest(d) for d in data]
    blobs = dict(zip(digests, data, strict=True))
    if not blobs:
        return digests
    store = blob_store(session)
    _upsert_rows(session, blobs, keep_bytes=store is None)
    if store is not None:
        store.put_many(blobs)
    return digests


def put_blob(session: Session, *, data: bytes) -> str:
    """Store ``data`` once (by sha256); return its digest."""
    return put_blobs(session, data=[data])[0]


def get_blobs(session: Session, *, digests: Iterable[str]) -> dict[str, bytes]:
    """The bytes of those of ``digests`` that exist, by digest (many at once: a dataset's
    images). ``BlobMissing`` when a row's bytes are not in the store."""
    wanted = sorted(set(digests))
    found: dict[str, bytes] = {}
    elsewhere: list[str] = []
    for start in range(0, len(wanted), ROWS_PER_STATEMENT):
        chunk = wanted[start:start + ROWS_PER_STATEMENT]
        for sha256, data in session.execute(select(Blob.sha256, Blob.data)
                                            .where(Blob.sha256.in_(chunk))):
            if data is not None:
                found[sha256] = data
            else:
                elsewhere.append(sha256)
    if elsewhere:
        store = blob_store(session)
        if store is None:
            raise BlobMissing(f"{len(elsewhere)} blobs are in a blob store, but this process "
                              "has none configured (CLIPFIT_BLOB_URL=database)")
        found.update(store.get_many(elsewhere))
    return found


def get_blob(session: Session, *, sha256: str) -> bytes | None:
    return get_blobs(session, digests=[sha256]).get(sha256)


def release_blobs(session: Session, *, digests: Iterable[str]) -> int:
    """The rows naming ``digests`` went: where nothing else names one (equal bytes are one
    blob, whoever stored them), it is deleted at once when its bytes are in the database,
    or left to the collector's grace period when they are in a store (a backup of the
    database taken a moment ago still names it); how many are unnamed now."""
    digests = set(digests)
    if not digests:
        return 0
    used = set()
    for column in NAMING_COLUMNS:
        used |= set(session.scalars(select(column).where(column.in_(digests)).distinct()))
    unused = digests - used
    if unused and blob_store(session) is None:
        session.execute(delete(Blob).where(Blob.sha256.in_(unused), Blob.data.is_not(None)))
    elif unused:
        session.execute(update(Blob).where(Blob.sha256.in_(unused)).values(touched_at=utcnow()))
    return len(unused)


# ---------------------------------------------------------------- the collector

def _unnamed():
    return [~exists().where(column == Blob.sha256) for column in NAMING_COLUMNS]


@dataclass
class Collected:
    adopted: int = 0  # bytes in the store with no row, taken in as rows (waiting the grace)
    deleted: int = 0  # blobs deleted (row and bytes)
    bytes_freed: int = 0
    skipped: list[str] = field(default_factory=list)  # what could not be done this round


def collect_garbage(engine: Engine, *, grace: timedelta, now: datetime | None = None,
                    store: BlobStore | None = None, limit: int = 10_000,
                    dry_run: bool = False) -> Collected:
    """Delete the blobs nothing has named or touched for ``grace``: their bytes, then their
    rows, a batch per transaction under the rows' locks (a writer naming one waits for the
    batch, then writes it anew). Bytes in ``store`` with no row, written more than ``grace``
    ago, are adopted as rows first. At most ``limit`` blobs per call; safe to run from
    several processes at once."""
    from .db import session_scope

    now = now or utcnow()
    cutoff = now - grace
    result = Collected()
    if store is not None:
        _adopt_orphans(engine, store, cutoff=cutoff, result=result, dry_run=dry_run)
    while result.deleted < limit:
        with session_scope(engine) as s:
            _lock_timeout(s)
            # PostgreSQL: lock a batch (rows a writer holds are skipped); the delete below
            # checks again, at its own instant, that nothing names them. SQLite: the delete
            # takes the database's write lock and checks in the same statement.
            locked = s.scalars(select(Blob.sha256).where(Blob.touched_at < cutoff, *_unnamed())
                               .order_by(Blob.sha256)
                               .limit(min(ROWS_PER_STATEMENT, limit - result.deleted))
                               .with_for_update(skip_locked=True)).all()
            if not locked:
                break
            if dry_run:
                sizes = s.scalars(select(Blob.size).where(Blob.sha256.in_(locked))).all()
                result.deleted += len(sizes)
                result.bytes_freed += sum(sizes)
                break
            found = {sha256: (size, in_store) for sha256, size, in_store in s.execute(
                select(Blob.sha256, Blob.size, Blob.data.is_(None))
                .where(Blob.sha256.in_(locked)))}
            deleted = s.scalars(delete(Blob).where(Blob.sha256.in_(locked), *_unnamed())
                                .returning(Blob.sha256)).all()
            # the bytes before the commit: should it fail, the rows stay with nothing naming
            # them and no bytes, which harms no one (a writer of the same bytes writes them)
            for sha256 in deleted:
                if found[sha256][1] and store is not None:
                    store.delete(sha256)
            result.deleted += len(deleted)
            result.bytes_freed += sum(found[sha256][0] for sha256 in deleted)
            if len(deleted) < len(locked):  # named meanwhile: the next round sees them named
                break
    return result


def _lock_timeout(session: Session) -> None:
    if session.get_bind().dialect.name == "postgresql":  # a writer holding a row: skip it
        session.execute(text("SET LOCAL lock_timeout = '2s'"))


def _adopt_orphans(engine: Engine, store: BlobStore, *, cutoff: datetime, result: Collected,
                   dry_run: bool) -> None:
    from sqlalchemy.exc import OperationalError

    from .db import session_scope

    old = (o for o in store.objects() if _naive_utc(o.written_at) < cutoff)
    while chunk := {o.sha256: o for o in islice(old, ROWS_PER_STATEMENT)}:
        try:
            with session_scope(engine) as s:
                _lock_timeout(s)
                known = set(s.scalars(select(Blob.sha256).where(Blob.sha256.in_(chunk))))
                orphans = [o for sha256, o in chunk.items() if sha256 not in known]
                if orphans and not dry_run:
                    s.execute(_insert(s).values([
                        {"sha256": o.sha256, "size": o.size, "data": None,
                         "created_at": _naive_utc(o.written_at),
                         "touched_at": _naive_utc(o.written_at)} for o in orphans])
                        .on_conflict_do_nothing(index_elements=[Blob.sha256]))
                result.adopted += len(orphans)
        except OperationalError:  # a writer holds one of them: it is not an orphan
            result.skipped.append(f"{len(chunk)} objects whose rows were being written")


def _naive_utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None)  # the database's clock: naive UTC
