"""What every use case runs with: the settings, the database, the job queue and quotas, the
capture writer, the counts of what is served, the cross-replica cache invalidation, and the
caller's identity. Built once per process by its front door
(``api.app.create_app``, the ``clipfit`` command)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from registry.blobs import use_blob_store
from registry.blobstore import BlobStore
from registry.db import get_engine, session_factory
from registry.settings import Settings

from .capture_writer import CaptureWriter
from .errors import Conflict
from .invalidation import Change, Invalidation
from .queue import JobQueue
from .quotas import Quotas
from .served import ServedCounts


class Caller(Protocol):
    """Who asks: the tenant whose rows a use case may see and change, and the API key (None
    when authentication is off) that upload quotas are counted on."""

    tenant_id: str
    key_id: str | None


@dataclass
class Context:
    settings: Settings
    sessions: sessionmaker[Session]
    queue: JobQueue
    quotas: Quotas
    captures: CaptureWriter  # classified images kept for review, written off the request path
    served: ServedCounts  # what adapters answered, counted here and added to the database
    # what a change committed here makes stale in this and every other API process
    invalidation: Invalidation
    inference: Any = None  # the serving engine (api.inference), where this process serves
    blobs: BlobStore | None = None  # where image and delta bytes live (None: the database)

    @classmethod
    def create(cls, settings: Settings, *, inference: Any = None) -> Context:
        blobs = use_blob_store(settings)  # where this database's blobs live, process-wide
        sessions = session_factory(get_engine(settings.sqlalchemy_url))
        invalidation = Invalidation(settings)
        captures = CaptureWriter(settings, sessions,
                                 generation=lambda: invalidation.generation)
        ctx = cls(settings=settings, sessions=sessions, queue=JobQueue(settings),
                  quotas=Quotas(settings), captures=captures,
                  served=ServedCounts(settings, sessions),
                  invalidation=invalidation, inference=inference, blobs=blobs)
        ctx.invalidation.on_change(ctx._forget_capture_rules)
        ctx.invalidation.on_reset(ctx.captures.forget_all)
        return ctx

    def _forget_capture_rules(self, change: Change) -> None:
        if change.kind in ("adapter", "capture_rules") and change.tenant_id is not None:
            # a deleted unnamed adapter is its own lineage
            self.captures.forget(change.tenant_id, change.id)

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A session for look-ups (nothing is committed)."""
        with self.sessions() as session:
            yield session

    @contextmanager
    def transaction(self, *, conflict: str | None = None) -> Iterator[Session]:
        """A session whose changes commit together at the end, or not at all. With
        ``conflict``, a uniqueness or foreign-key race (a concurrent request changed the
        same rows) is a ``Conflict`` with that sentence."""
        with self.sessions() as session:
            try:
                yield session
                session.commit()
            except IntegrityError as e:
                session.rollback()
                if conflict is None:
                    raise
                raise Conflict(conflict) from e
            except BaseException:
                session.rollback()
                raise
