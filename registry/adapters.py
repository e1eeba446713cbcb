"""Trained adapters: rows, per-name version numbers and aliases.

Keyword-only arguments; ``None`` when nothing is found; the caller owns the transaction."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from .blobs import put_blob, release_blobs
from .db import owned as _owned
from .jobs import finish_job
from .models import (
    Adapter,
    AdapterAlias,
    AdapterName,
    Job,
    JobStatus,
    Tenant,
    utcnow,
)
from .webhooks import enqueue_webhook_event


def count_adapters(session: Session, *, tenant_id: str) -> int:
    return session.scalar(select(func.count()).select_from(Adapter)
                          .where(Adapter.tenant_id == tenant_id)) or 0


def store_adapter(
    session: Session, *, job: Job, weights: bytes, config: dict[str, Any],
    metrics: dict[str, Any], name: str | None = None,
) -> Adapter:
    """The adapter of a job, and the job marked succeeded, in the caller's transaction."""
    digest = put_blob(session, data=weights)
    name = name or job.name
    adapter = Adapter(
        tenant_id=job.tenant_id, job_id=job.id, name=name,
        version=next_version(session, tenant_id=job.tenant_id, name=name),
        base_model=config["base_model"],
        base_fingerprint=config["base_fingerprint"], classnames=config["classnames"],
        templates=config["templates"],
        metrics=metrics, config=config, trainable_count=config.get("trainable_count", 0),
        weights_sha256=digest, size_bytes=len(weights), dataset_id=job.dataset_id,
        benchmark_images=(job.retrain or {}).get("benchmark_images"))
    session.add(adapter)
    session.flush()
    finish_job(session, job=job, status=JobStatus.succeeded, adapter_id=adapter.id)
    return adapter


def next_version(session: Session, *, tenant_id: str, name: str | None) -> int | None:
    """The next version number of ``name`` in the tenant (None for an unnamed adapter). The
    tenant's row is locked first, so concurrent stores of one name number one after the
    other (PostgreSQL; SQLite has one writer at a time anyway)."""
    if name is None:
        return None
    # FOR NO KEY UPDATE: serializes numbering per tenant without blocking the inserts that
    # merely reference the tenant (they take FOR KEY SHARE)
    session.execute(select(Tenant.id).where(Tenant.id == tenant_id)
                    .with_for_update(key_share=True))
    counter = AdapterName.tenant_id == tenant_id, AdapterName.name == name
    # the write comes first, so SQLite takes its write lock before anything is read
    bumped = session.execute(update(AdapterName).where(*counter)
                             .values(last_version=AdapterName.last_version + 1))
    if bumped.rowcount == 0:
        session.add(AdapterName(tenant_id=tenant_id, name=name, last_version=1))
        session.flush()
        return 1
    return session.scalar(select(AdapterName.last_version).where(*counter))


def lock_name(session: Session, *, tenant_id: str, name: str) -> None:
    """Lock the name's version counter until the transaction ends: the retrains of a
    lineage (and the labels that may start one) take turns (PostgreSQL; SQLite has one
    writer at a time anyway)."""
    session.execute(select(AdapterName.name).where(
        AdapterName.tenant_id == tenant_id, AdapterName.name == name).with_for_update())


def newest_version(session: Session, *, tenant_id: str, name: str) -> Adapter | None:
    """The name's adapter with the highest version number."""
    return session.scalar(select(Adapter).where(Adapter.tenant_id == tenant_id,
                                                Adapter.name == name)
                          .order_by(Adapter.version.desc()).limit(1))


def resolve_adapter(session: Session, *, tenant_id: str, reference: str) -> Adapter | None:
    """An adapter by id, ``name@VERSION`` or ``name@alias`` (split at the last ``@``)."""
    if "@" not in reference:
        return get_adapter(session, adapter_id=reference, tenant_id=tenant_id)
    name, tag = reference.rsplit("@", 1)
    if re.fullmatch(r"[0-9]{1,9}", tag):  # ASCII digits only; aliases start with a letter
        return session.scalar(select(Adapter).where(
            Adapter.tenant_id == tenant_id, Adapter.name == name, Adapter.version == int(tag)))
    alias = get_alias(session, tenant_id=tenant_id, name=name, alias=tag)
    return session.get(Adapter, alias.adapter_id) if alias is not None else None


def get_alias(session: Session, *, tenant_id: str, name: str, alias: str) -> AdapterAlias | None:
    return session.scalar(select(AdapterAlias).where(
        AdapterAlias.tenant_id == tenant_id, AdapterAlias.name == name,
        AdapterAlias.alias == alias))


def set_alias(session: Session, *, tenant_id: str, name: str, alias: str,
              adapter: Adapter) -> AdapterAlias:
    """Point ``name@alias`` at ``adapter`` (created, or moved), in the caller's transaction."""
    row = session.scalar(select(AdapterAlias).where(
        AdapterAlias.tenant_id == tenant_id, AdapterAlias.name == name,
        AdapterAlias.alias == alias).with_for_update())
    if row is None:
        row = AdapterAlias(tenant_id=tenant_id, name=name, alias=alias, adapter_id=adapter.id)
        session.add(row)
    else:
        row.adapter_id, row.updated_at = adapter.id, utcnow()
    session.flush()
    return row


def list_aliases(session: Session, *, tenant_id: str, name: str | None = None
                 ) -> list[AdapterAlias]:
    query = select(AdapterAlias).where(AdapterAlias.tenant_id == tenant_id)
    if name is not None:
        query = query.where(AdapterAlias.name == name)
    return list(session.scalars(query.order_by(AdapterAlias.name, AdapterAlias.alias)))


def delete_alias(session: Session, *, tenant_id: str, name: str, alias: str) -> bool:
    row = get_alias(session, tenant_id=tenant_id, name=name, alias=alias)
    if row is None:
        return False
    session.delete(row)
    session.flush()
    return True


def aliases_of(session: Session, *, adapter_id: str) -> list[AdapterAlias]:
    return list(session.scalars(select(AdapterAlias).where(
        AdapterAlias.adapter_id == adapter_id)))


def import_adapter(session: Session, *, tenant_id: str, weights: bytes, config: dict[str, Any],
                   name: str | None = None) -> Adapter:
    """An adapter trained elsewhere (no job), in the caller's transaction."""
    digest = put_blob(session, data=weights)
    adapter = Adapter(
        tenant_id=tenant_id, job_id=None, name=name,
        version=next_version(session, tenant_id=tenant_id, name=name),
        base_model=config["base_model"],
        base_fingerprint=config["base_fingerprint"], classnames=config["classnames"],
        templates=config["templates"],
        metrics=config.get("metrics", {}), config=config,
        trainable_count=config.get("trainable_count", 0), weights_sha256=digest,
        size_bytes=len(weights))
    session.add(adapter)
    session.flush()
    return adapter


def get_adapter(session: Session, *, adapter_id: str,
                tenant_id: str | None = None) -> Adapter | None:
    """The adapter, if it exists and (with ``tenant_id``) belongs to that tenant."""
    adapter = session.get(Adapter, adapter_id)
    return adapter if adapter is not None and tenant_id in (None, adapter.tenant_id) else None


def get_adapter_for_job(session: Session, *, job_id: str) -> Adapter | None:
    return session.scalar(select(Adapter).where(Adapter.job_id == job_id))


def list_adapters(session: Session, *, tenant_id: str | None, limit: int = 50,
                  before: tuple[datetime, str] | None = None) -> list[Adapter]:
    query = (_owned(select(Adapter), Adapter, tenant_id)
             .order_by(Adapter.created_at.desc(), Adapter.id.desc()).limit(limit))
    if before is not None:
        created, adapter_id = before
        query = query.where((Adapter.created_at < created)
                            | ((Adapter.created_at == created) & (Adapter.id < adapter_id)))
    return list(session.scalars(query))


def delete_adapter(session: Session, *, adapter_id: str, tenant_id: str | None = None) -> bool:
    """Remove an adapter (its weights blob too, unless another adapter shares it)."""
    adapter = get_adapter(session, adapter_id=adapter_id, tenant_id=tenant_id)
    if adapter is None:
        return False
    digest = adapter.weights_sha256
    enqueue_webhook_event(session, tenant_id=adapter.tenant_id, event_type="adapter.deleted",
                          data={"adapter_id": adapter.id, "name": adapter.name,
                                "base_model": adapter.base_model})
    session.delete(adapter)
    session.flush()
    release_blobs(session, digests=[digest])
    return True


def versions_of(session: Session, *, tenant_id: str, name: str) -> list[Adapter]:
    """Every stored version of the tenant's ``name``, oldest first."""
    return list(session.scalars(select(Adapter).where(
        Adapter.tenant_id == tenant_id, Adapter.name == name).order_by(Adapter.version)))
