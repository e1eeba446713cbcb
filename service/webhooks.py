"""Webhook endpoints per tenant: signed notifications of finished jobs and deleted adapters,
written to an outbox in the transaction that causes them and sent by the workers
(``worker.webhooks``), with a delivery log and manual redelivery."""

from __future__ import annotations

from registry import webhooks as webhook_rows
from registry.models import WebhookDelivery, WebhookEndpoint

from .context import Caller, Context
from .errors import Conflict, Invalid, NotFound, found
from .webhook_urls import url_problem

MAX_ENDPOINTS = 20


def create(ctx: Context, caller: Caller, *, url: str, events: list[str],
           description: str | None) -> WebhookEndpoint:
    """A new endpoint; its signing secret is on the returned row (shown to the caller once)."""
    problem = url_problem(url, allow_private=ctx.settings.webhook_allow_private)
    if problem:
        raise Invalid([f"url: {problem}"])
    with ctx.transaction() as s:
        if len(webhook_rows.list_webhooks(s, tenant_id=caller.tenant_id)) >= MAX_ENDPOINTS:
            raise Conflict(f"at most {MAX_ENDPOINTS} webhook endpoints per tenant")
        return webhook_rows.create_webhook(s, tenant_id=caller.tenant_id, url=url,
                                           events=sorted(set(events)), description=description)


def list_endpoints(ctx: Context, caller: Caller) -> list[WebhookEndpoint]:
    with ctx.reading() as s:
        return list(webhook_rows.list_webhooks(s, tenant_id=caller.tenant_id))


def _endpoint(s, caller: Caller, webhook_id: str) -> WebhookEndpoint:
    return found(webhook_rows.get_webhook(s, webhook_id=webhook_id, tenant_id=caller.tenant_id),
                 "webhook", webhook_id)


def get(ctx: Context, caller: Caller, webhook_id: str) -> WebhookEndpoint:
    with ctx.reading() as s:
        return _endpoint(s, caller, webhook_id)


def delete(ctx: Context, caller: Caller, webhook_id: str) -> None:
    with ctx.transaction() as s:
        if not webhook_rows.delete_webhook(s, webhook_id=webhook_id,
                                           tenant_id=caller.tenant_id):
            raise NotFound("webhook", webhook_id)


def deliveries(ctx: Context, caller: Caller, webhook_id: str, *, limit: int
               ) -> list[WebhookDelivery]:
    with ctx.reading() as s:
        _endpoint(s, caller, webhook_id)
        return list(webhook_rows.list_deliveries(s, endpoint_id=webhook_id, limit=limit))


def redeliver(ctx: Context, caller: Caller, webhook_id: str, delivery_id: str
              ) -> WebhookDelivery:
    """The same message (same webhook-id) sent again soon; its attempts start over."""
    with ctx.transaction() as s:
        _endpoint(s, caller, webhook_id)
        delivery = webhook_rows.redeliver(s, endpoint_id=webhook_id, delivery_id=delivery_id)
        if delivery is None:
            raise NotFound("delivery", delivery_id)
        return delivery
