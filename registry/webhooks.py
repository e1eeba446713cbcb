"""Webhook endpoints and the outbox of their deliveries.

Keyword-only arguments; ``None`` when nothing is found; the caller owns the transaction."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from .db import owned as _owned
from .models import (
    WebhookDelivery,
    WebhookEndpoint,
    utcnow,
)


def create_webhook(session: Session, *, tenant_id: str, url: str, events: list[str],
                   description: str | None = None) -> WebhookEndpoint:
    """A new endpoint with a fresh signing secret (``whsec_`` + 24 random bytes, base64)."""
    import base64

    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    endpoint = WebhookEndpoint(tenant_id=tenant_id, url=url, secret=secret, events=events,
                               description=description)
    session.add(endpoint)
    session.flush()
    return endpoint


def list_webhooks(session: Session, *, tenant_id: str) -> Sequence[WebhookEndpoint]:
    return session.scalars(select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tenant_id)
                           .order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)).all()


def get_webhook(session: Session, *, webhook_id: str,
                tenant_id: str | None = None) -> WebhookEndpoint | None:
    query = _owned(select(WebhookEndpoint).where(WebhookEndpoint.id == webhook_id),
                   WebhookEndpoint, tenant_id)
    return session.scalar(query)


def delete_webhook(session: Session, *, webhook_id: str, tenant_id: str) -> bool:
    endpoint = get_webhook(session, webhook_id=webhook_id, tenant_id=tenant_id)
    if endpoint is None:
        return False
    session.execute(delete(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint.id))
    session.delete(endpoint)
    return True


def enqueue_webhook_event(session: Session, *, tenant_id: str, event_type: str,
                          data: dict[str, Any]) -> list[WebhookDelivery]:
    """One delivery per endpoint of the tenant subscribed to ``event_type``, in the caller's
    transaction: the event and its deliveries are stored together or not at all."""
    endpoints = session.scalars(select(WebhookEndpoint)
                                .where(WebhookEndpoint.tenant_id == tenant_id)).all()
    now = utcnow()
    body = {"type": event_type, "timestamp": now.isoformat() + "Z", "data": data}
    out = []
    for endpoint in endpoints:
        if event_type in endpoint.events:
            delivery = WebhookDelivery(endpoint_id=endpoint.id, event_type=event_type,
                                       payload=body, next_attempt_at=now)
            session.add(delivery)
            out.append(delivery)
    return out


def due_deliveries(session: Session, *, now: datetime, limit: int = 50,
                   lock: bool = False) -> Sequence[WebhookDelivery]:
    """Pending deliveries whose next attempt is due; with ``lock``, rows another
    transaction holds are skipped (``FOR UPDATE SKIP LOCKED``; SQLite has one writer)."""
    query = (select(WebhookDelivery)
             .where(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now)
             .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id).limit(limit))
    if lock:
        query = query.with_for_update(skip_locked=True)
    return session.scalars(query).all()


def list_deliveries(session: Session, *, endpoint_id: str, limit: int = 100,
                    before: datetime | None = None) -> Sequence[WebhookDelivery]:
    query = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id)
    if before is not None:
        query = query.where(WebhookDelivery.created_at < before)
    return session.scalars(query.order_by(WebhookDelivery.created_at.desc(),
                                          WebhookDelivery.id.desc()).limit(limit)).all()


def redeliver(session: Session, *, endpoint_id: str, delivery_id: str) -> WebhookDelivery | None:
    """Send a delivery again, as soon as possible: the same message (same webhook-id), its
    attempts and last answer start over."""
    delivery = session.get(WebhookDelivery, delivery_id)
    if delivery is None or delivery.endpoint_id != endpoint_id:
        return None
    delivery.status, delivery.attempts, delivery.next_attempt_at = "pending", 0, utcnow()
    delivery.delivered_at = delivery.last_status_code = delivery.last_error = None
    return delivery
