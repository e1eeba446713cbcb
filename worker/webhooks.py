"""Webhook deliveries, signed per the Standard Webhooks spec, sent by the workers.

A delivery row is written in the same transaction as the event it reports (``registry.crud.
enqueue_webhook_event``). Every worker process runs a ``Deliverer`` thread. Each round it
claims due deliveries (``FOR UPDATE SKIP LOCKED`` where the database has it, and a claim
time pushed past the send's deadline, committed at once), sends them with no transaction
open, and records each answer in a new transaction; several workers share the work without
sending a row twice, and a worker that dies mid-send leaves its claims to expire and be
sent again (delivery is at least once). A ``2xx`` answer marks a delivery succeeded;
anything else (an error status, a timeout, a refused connection) schedules the next attempt
after CLIPFIT_WEBHOOK_RETRY_SECONDS, doubling each time up to an hour, and after
CLIPFIT_WEBHOOK_MAX_ATTEMPTS marks it failed (a manual redelivery starts it over).

Signature (https://www.standardwebhooks.com): headers ``webhook-id`` (the delivery's id, the
same on every attempt, for the receiver to drop duplicates), ``webhook-timestamp`` (Unix
seconds) and ``webhook-signature``: ``v1,`` + base64 of HMAC-SHA256 over
``"{id}.{timestamp}.{body}"`` keyed with the base64-decoded part of the endpoint's
``whsec_`` secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import threading
import time
from datetime import timedelta

import httpx
from sqlalchemy import Engine

from registry import crud
from registry.db import make_engine, session_scope
from registry.models import WebhookDelivery, WebhookEndpoint, utcnow
from registry.settings import Settings
from service.webhook_urls import url_problem

log = logging.getLogger(__name__)
MAX_DELAY_SECONDS = 3600.0


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for one message."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def send(client: httpx.Client, endpoint: WebhookEndpoint, delivery: WebhookDelivery,
         allow_private: bool = False, now: int | None = None) -> tuple[int | None, str | None]:
    """POST one delivery; (status code or None, error or None). The URL is checked again
    first: a name may resolve elsewhere than when it was registered. Only the status line
    and headers are read: a receiver cannot hold the sender by dripping a body."""
    problem = url_problem(endpoint.url, allow_private=allow_private, resolve=True)
    if problem:
        return None, f"not sent: the url {problem}"[:500]
    body = json.dumps(delivery.payload, separators=(",", ":")).encode()
    timestamp = int(now if now is not None else time.time())
    headers = {"content-type": "application/json", "user-agent": "clipfit-webhooks",
               "webhook-id": delivery.id, "webhook-timestamp": str(timestamp),
               "webhook-signature": sign(endpoint.secret, delivery.id, timestamp, body)}
    try:
        with client.stream("POST", endpoint.url, content=body, headers=headers) as response:
            code = response.status_code
    except httpx.HTTPError as e:
        return None, f"{type(e).__name__}: {e}"[:500]
    if 200 <= code < 300:
        return code, None
    return code, f"the receiver answered {code}"


def retry_delay(settings: Settings, attempts: int) -> float:
    """Seconds before the next attempt after ``attempts`` failed ones: doubling, capped."""
    return min(MAX_DELAY_SECONDS, settings.webhook_retry_seconds * 2 ** (attempts - 1))


def claim(engine: Engine, settings: Settings, limit: int = 20) -> list[tuple]:
    """Due deliveries, claimed for one send: their next attempt is pushed past the send's
    deadline in a committed transaction, so no other sender takes them meanwhile."""
    hold = timedelta(seconds=2 * settings.webhook_timeout_seconds + 30)
    with session_scope(engine) as s:
        rows = crud.due_deliveries(s, now=utcnow(), limit=limit, lock=True)
        out = []
        for delivery in rows:
            delivery.next_attempt_at = utcnow() + hold
            endpoint = s.get(WebhookEndpoint, delivery.endpoint_id)
            if endpoint is not None:
                s.expunge(endpoint)
                out.append((delivery.id, endpoint, dict(delivery.payload)))
    return out


def deliver_once(engine: Engine, settings: Settings, client: httpx.Client) -> dict[str, int]:
    """One round: claim the due deliveries, send each, record each answer; counts."""
    counts = {"succeeded": 0, "retrying": 0, "failed": 0}
    for delivery_id, endpoint, payload in claim(engine, settings):
        code, error = send(client, endpoint, WebhookDelivery(id=delivery_id, payload=payload),
                           settings.webhook_allow_private)
        with session_scope(engine) as s:
            delivery = s.get(WebhookDelivery, delivery_id)
            if delivery is None:  # its endpoint was deleted meanwhile
                continue
            delivery.attempts += 1
            delivery.last_status_code, delivery.last_error = code, error
            if error is None:
                delivery.status, delivery.delivered_at = "succeeded", utcnow()
                counts["succeeded"] += 1
            elif delivery.attempts >= settings.webhook_max_attempts:
                delivery.status = "failed"
                counts["failed"] += 1
            else:
                delivery.next_attempt_at = utcnow() + timedelta(
                    seconds=retry_delay(settings, delivery.attempts))
                counts["retrying"] += 1
    if counts["retrying"] or counts["failed"]:
        log.warning("webhooks: %s", counts)
    return counts


class Deliverer:
    """``deliver_once`` every CLIPFIT_WEBHOOK_INTERVAL_SECONDS in a daemon thread."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.engine = make_engine(settings.sqlalchemy_url, pooled=False)
        # Redirects are not followed (the URL that was checked is the one called), and no
        # proxy from the environment is used (it would resolve names itself).
        timeout = settings.webhook_timeout_seconds
        self.client = httpx.Client(timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
                                   follow_redirects=False, trust_env=False)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="clipfit-webhooks", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.settings.webhook_interval_seconds):
            try:
                deliver_once(self.engine, self.settings, self.client)
            except Exception:
                log.warning("webhook round failed; retrying", exc_info=True)

    def start(self) -> Deliverer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.settings.webhook_timeout_seconds + 5)
        self.client.close()
        self.engine.dispose()
