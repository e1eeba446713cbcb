"""Moving blob bytes between the database and a blob store, and checking that every blob the
database knows has its bytes (``clipfit blobs migrate | verify``).

A move goes a batch per transaction: the bytes are written to the store and read back, and
only when their sha256 matches is the row's copy dropped; interrupted, it loses nothing and
the next run carries on where it stopped."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import Engine, func, select, update

from .blobstore import BlobMissing, BlobStore
from .db import session_scope
from .models import Blob

Progress = Callable[[int, int], None]  # (done, total)


@dataclass
class Moved:
    blobs: int = 0
    bytes: int = 0


def _count(engine: Engine, where) -> int:
    with session_scope(engine) as s:
        return s.scalar(select(func.count()).select_from(Blob).where(where))


def move_to_store(engine: Engine, store: BlobStore, *, batch: int = 200,
                  progress: Progress | None = None) -> Moved:
    """Every blob whose bytes are in the database, into ``store`` (verified by sha256)."""
    total, moved = _count(engine, Blob.data.is_not(None)), Moved()
    while True:
        with session_scope(engine) as s:
            rows = s.execute(select(Blob.sha256, Blob.data).where(Blob.data.is_not(None))
                             .order_by(Blob.sha256).limit(batch)
                             .with_for_update(skip_locked=True)).all()
            if not rows:
                return moved
            blobs = dict(rows)
            store.put_many(blobs)
            back = store.get_many(blobs)
            wrong = [sha for sha in blobs if hashlib.sha256(back[sha]).hexdigest() != sha]
            if wrong:
                raise BlobMissing(f"{len(wrong)} blobs read back from {store.location} with "
                                  f"other bytes (first: {wrong[0]}); nothing of this batch "
                                  "was dropped from the database")
            s.execute(update(Blob).where(Blob.sha256.in_(blobs)).values(data=None))
            moved.blobs += len(blobs)
            moved.bytes += sum(len(d) for d in blobs.values())
        if progress:
            progress(moved.blobs, total)


def move_to_database(engine: Engine, store: BlobStore, *, batch: int = 200,
                     progress: Progress | None = None) -> Moved:
    """Every blob whose bytes are in ``store``, back into its database row (before leaving a
    store, or downgrading below the blob store's migration). The store keeps its copy."""
    total, moved = _count(engine, Blob.data.is_(None)), Moved()
    while True:
        with session_scope(engine) as s:
            digests = s.scalars(select(Blob.sha256).where(Blob.data.is_(None))
                                .order_by(Blob.sha256).limit(batch)
                                .with_for_update(skip_locked=True)).all()
            if not digests:
                return moved
            blobs = store.get_many(digests)
            for sha256, data in blobs.items():
                if hashlib.sha256(data).hexdigest() != sha256:
                    raise BlobMissing(f"blob {sha256} has other bytes in {store.location}")
                s.execute(update(Blob).where(Blob.sha256 == sha256).values(data=data))
            moved.blobs += len(blobs)
            moved.bytes += sum(len(d) for d in blobs.values())
        if progress:
            progress(moved.blobs, total)


@dataclass
class Verified:
    in_database: int = 0  # bytes still in their rows
    in_store: int = 0  # rows whose bytes are in the store, found
    missing: list[str] = field(default_factory=list)  # rows whose bytes are nowhere
    wrong: list[str] = field(default_factory=list)  # bytes with another digest (deep only)
    unnamed_objects: int = 0  # bytes in the store no row knows (the collector's to judge)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.wrong


def verify(engine: Engine, store: BlobStore | None, *, deep: bool = False,
           batch: int = 200) -> Verified:
    """Every row's bytes are in the database or in ``store`` (at the row's size; with
    ``deep``, read and hashed)."""
    result = Verified()
    objects = {o.sha256: o.size for o in store.objects()} if store is not None else {}
    known: set[str] = set()
    with session_scope(engine) as s:
        rows = s.execute(select(Blob.sha256, Blob.size, Blob.data.is_(None))
                         .order_by(Blob.sha256)).all()
    for sha256, size, elsewhere in rows:
        known.add(sha256)
        if not elsewhere:
            result.in_database += 1
        elif objects.get(sha256) == size:
            result.in_store += 1
        else:
            result.missing.append(sha256)
    if deep:
        result.wrong = _rehash(engine, store, rows, batch=batch)
    result.unnamed_objects = len(set(objects) - known)
    return result


def _rehash(engine: Engine, store: BlobStore | None, rows, *, batch: int) -> list[str]:
    from .blobs import get_blobs

    wrong = []
    digests = [sha256 for sha256, _, _ in rows]
    for start in range(0, len(digests), batch):
        with session_scope(engine) as s:
            try:
                found = get_blobs(s, digests=digests[start:start + batch])
            except BlobMissing:
                continue  # already counted as missing
        wrong += [sha for sha, data in found.items()
                  if hashlib.sha256(data).hexdigest() != sha]
    return wrong
