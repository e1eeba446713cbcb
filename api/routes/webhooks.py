"""Webhook endpoints per tenant: signed notifications of finished jobs and deleted adapters,
sent by the workers (``worker.webhooks``), with a delivery log and manual redelivery."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response

from registry import crud
from registry.webhook_urls import url_problem

from ..auth import Reader, Trainer
from ..deps import SessionDep, SettingsDep, not_found
from ..schemas import (
    DeliveriesPublic,
    DeliveryPublic,
    WebhookCreate,
    WebhookCreated,
    WebhookPublic,
    WebhooksPublic,
)

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])
MAX_ENDPOINTS = 20


@router.post("", status_code=201, response_model=WebhookCreated,
             summary="Register an endpoint; the answer holds its signing secret, shown once")
def create_webhook(body: WebhookCreate, session: SessionDep, settings: SettingsDep,
                   principal: Trainer):
    problem = url_problem(body.url, allow_private=settings.webhook_allow_private)
    if problem:
        raise HTTPException(422, detail={"message": "invalid request",
                                         "problems": [f"url: {problem}"]})
    if len(crud.list_webhooks(session, tenant_id=principal.tenant_id)) >= MAX_ENDPOINTS:
        raise HTTPException(409, detail=f"at most {MAX_ENDPOINTS} webhook endpoints per tenant")
    endpoint = crud.create_webhook(session, tenant_id=principal.tenant_id, url=body.url,
                                   events=sorted(set(body.events)),
                                   description=body.description)
    session.commit()
    return WebhookCreated.model_validate(endpoint)


@router.get("", response_model=WebhooksPublic)
def list_webhooks(session: SessionDep, principal: Reader):
    return WebhooksPublic(data=crud.list_webhooks(session, tenant_id=principal.tenant_id))


@router.get("/{webhook_id}", response_model=WebhookPublic)
def get_webhook(webhook_id: str, session: SessionDep, principal: Reader):
    endpoint = crud.get_webhook(session, webhook_id=webhook_id, tenant_id=principal.tenant_id)
    if endpoint is None:
        raise not_found("webhook", webhook_id)
    return endpoint


@router.delete("/{webhook_id}", status_code=204, response_class=Response)
def delete_webhook(webhook_id: str, session: SessionDep, principal: Trainer):
    if not crud.delete_webhook(session, webhook_id=webhook_id, tenant_id=principal.tenant_id):
        raise not_found("webhook", webhook_id)
    session.commit()
    return Response(status_code=204)


@router.get("/{webhook_id}/deliveries", response_model=DeliveriesPublic,
            summary="The endpoint's deliveries, newest first: status, attempts, last answer")
def list_deliveries(webhook_id: str, session: SessionDep, principal: Reader,
                    limit: Annotated[int, Query(ge=1, le=200)] = 50):
    if crud.get_webhook(session, webhook_id=webhook_id, tenant_id=principal.tenant_id) is None:
        raise not_found("webhook", webhook_id)
    return DeliveriesPublic(data=crud.list_deliveries(session, endpoint_id=webhook_id,
                                                      limit=limit))


@router.post("/{webhook_id}/deliveries/{delivery_id}/redeliver", status_code=202,
             response_model=DeliveryPublic, summary="Send a delivery again, soon")
def redeliver(webhook_id: str, delivery_id: str, session: SessionDep, principal: Trainer):
    if crud.get_webhook(session, webhook_id=webhook_id, tenant_id=principal.tenant_id) is None:
        raise not_found("webhook", webhook_id)
    delivery = crud.redeliver(session, endpoint_id=webhook_id, delivery_id=delivery_id)
    if delivery is None:
        raise not_found("delivery", delivery_id)
    session.commit()
    return delivery
