"""Webhook endpoints per tenant: signed notifications of finished jobs and deleted adapters,
sent by the workers, with a delivery log and manual redelivery."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from service import webhooks

from ..auth import Reader, Trainer
from ..deps import ContextDep
from ..schemas import (
    DeliveriesPublic,
    DeliveryPublic,
    WebhookCreate,
    WebhookCreated,
    WebhookPublic,
    WebhooksPublic,
)

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


@router.post("", status_code=201, response_model=WebhookCreated,
             summary="Register an endpoint; the answer holds its signing secret, shown once")
def create_webhook(body: WebhookCreate, ctx: ContextDep, principal: Trainer):
    return webhooks.create(ctx, principal, url=body.url, events=body.events,
                           description=body.description)


@router.get("", response_model=WebhooksPublic)
def list_webhooks(ctx: ContextDep, principal: Reader):
    return WebhooksPublic(data=webhooks.list_endpoints(ctx, principal))


@router.get("/{webhook_id}", response_model=WebhookPublic)
def get_webhook(webhook_id: str, ctx: ContextDep, principal: Reader):
    return webhooks.get(ctx, principal, webhook_id)


@router.delete("/{webhook_id}", status_code=204, response_class=Response)
def delete_webhook(webhook_id: str, ctx: ContextDep, principal: Trainer):
    webhooks.delete(ctx, principal, webhook_id)
    return Response(status_code=204)


@router.get("/{webhook_id}/deliveries", response_model=DeliveriesPublic,
            summary="The endpoint's deliveries, newest first: status, attempts, last answer")
def list_deliveries(webhook_id: str, ctx: ContextDep, principal: Reader,
                    limit: Annotated[int, Query(ge=1, le=200)] = 50):
    return DeliveriesPublic(data=webhooks.deliveries(ctx, principal, webhook_id, limit=limit))


@router.post("/{webhook_id}/deliveries/{delivery_id}/redeliver", status_code=202,
             response_model=DeliveryPublic, summary="Send a delivery again, soon")
def redeliver(webhook_id: str, delivery_id: str, ctx: ContextDep, principal: Trainer):
    return webhooks.redeliver(ctx, principal, webhook_id, delivery_id)
