"""Signed webhooks, end to end: ``clipfit serve`` (SQLite + in-process worker, whose
webhook sender runs beside it) calls real HTTP receivers that verify each signature with the
Standard Webhooks library; a receiver that is down gets the event once it is back."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from clipfit.client import Client
from service.webhook_urls import url_problem
from worker.webhooks import deliver_once, retry_delay, sign

from .conftest import new_key
from .test_embedded import Server, free_port


class Receiver:
    """An HTTP receiver on 127.0.0.1 that verifies signatures and records events by
    webhook-id; it can be started later (down until then)."""

    def __init__(self, port: int, status: int = 204):
        self.port, self.secret, self.server, self.status = port, None, None, status
        self.received: list[dict] = []  # verified: {"id", "type", "data"}
        self.rejected = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    event = Webhook(receiver.secret).verify(body, headers)
                except WebhookVerificationError:
                    receiver.rejected += 1
                    self.send_response(400)
                else:
                    receiver.received.append({"id": headers["webhook-id"], **event})
                    self.send_response(receiver.status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()

    def wait_for(self, predicate, timeout: float = 30.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while not predicate(self.received):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; received {self.received}")
            time.sleep(0.1)
        return self.received


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("webhooks")
    server = Server(root / "data", free_port(), root / "serve.log", env={
        "CLIPFIT_WEBHOOK_ALLOW_PRIVATE": "true",  # the receivers are on 127.0.0.1
        "CLIPFIT_WEBHOOK_INTERVAL_SECONDS": "0.2", "CLIPFIT_WEBHOOK_RETRY_SECONDS": "0.5"})
    server.wait_ready()
    yield server
    server.stop()


def test_signed_events_reach_receivers_once_and_a_down_receiver_later(server, colour_set):
    api = server.client
    cf = Client(http=api)
    up, down = Receiver(free_port()).start(), Receiver(free_port())
    try:
        r = api.post("/v1/webhooks", json={"url": up.url, "description": "all", "events": [
            "job.succeeded", "job.failed", "job.cancelled", "adapter.deleted"]})
        assert r.status_code == 201, r.text
        hook = r.json()
        assert hook["secret"].startswith("whsec_")
        up.secret = hook["secret"]
        r = api.post("/v1/webhooks", json={"url": down.url, "events": ["job.succeeded"]})
        later = r.json()
        down.secret = later["secret"]
        listed = api.get("/v1/webhooks").json()["data"]
        assert {h["id"] for h in listed} == {hook["id"], later["id"]}
        assert all("secret" not in h for h in listed)  # shown once, at creation

        job = cf.jobs.create(colour_set, base_model="clipfit-tiny", epochs=2, batch_size=16)
        job = cf.jobs.wait(job.id, timeout=120)
        assert job.status == "succeeded"
        got = up.wait_for(lambda r: any(e["type"] == "job.succeeded" for e in r))
        event = next(e for e in got if e["type"] == "job.succeeded")
        assert event["data"]["job_id"] == job.id and event["data"]["adapter_id"] == job.adapter_id

        # the receiver that is down: attempts are logged with their error, then it gets it
        deadline = time.monotonic() + 30
        while True:
            log = api.get(f"/v1/webhooks/{later['id']}/deliveries").json()["data"]
            if log and log[0]["attempts"] >= 2:
                break
            assert time.monotonic() < deadline, log
            time.sleep(0.2)
        assert log[0]["status"] == "pending" and "ConnectError" in log[0]["last_error"]
        down.start()
        got = down.wait_for(lambda r: len(r) >= 1)
        assert got[0]["data"]["job_id"] == job.id and got[0]["id"] == log[0]["id"]
        deadline = time.monotonic() + 10
        while api.get(f"/v1/webhooks/{later['id']}/deliveries").json()["data"][0][
                "status"] != "succeeded":
            assert time.monotonic() < deadline
            time.sleep(0.2)

        # a cancelled job and a deleted adapter reach the receiver that asked for them
        slow = cf.jobs.create(colour_set, base_model="clipfit-tiny", epochs=200, batch_size=8)
        cf.jobs.cancel(slow.id)
        assert cf.jobs.wait(slow.id, timeout=60).status == "cancelled"
        cf.adapters.delete(job.adapter_id)
        up.wait_for(lambda r: {"job.cancelled", "adapter.deleted"} <= {e["type"] for e in r})

        # manual redelivery: the same webhook-id once more
        first = next(d for d in api.get(f"/v1/webhooks/{hook['id']}/deliveries").json()["data"]
                 if d["event_type"] == "job.succeeded")
        assert first["status"] == "succeeded" and first["attempts"] == 1
        r = api.post(f"/v1/webhooks/{hook['id']}/deliveries/{first['id']}/redeliver")
        assert r.status_code == 202
        up.wait_for(lambda r: sum(e["id"] == first["id"] for e in r) == 2)
        time.sleep(1.0)  # nothing else arrives: one event, one delivery (plus the redelivery)
        ids = [e["id"] for e in up.received]
        assert len(ids) == len(set(ids)) + 1 and len(down.received) == 1
        assert up.rejected == 0 and down.rejected == 0
        # the receiver only subscribed to job.succeeded got nothing else
        assert {e["type"] for e in down.received} == {"job.succeeded"}

        # unsubscribed: deleting the endpoint stops its deliveries and its log
        assert api.delete(f"/v1/webhooks/{later['id']}").status_code == 204
        assert api.get(f"/v1/webhooks/{later['id']}/deliveries").status_code == 404
    finally:
        up.stop()
        down.stop()


def test_webhook_requests_are_checked(server):
    api = server.client
    r = api.post("/v1/webhooks", json={"url": "ftp://x", "events": ["job.nope"]})
    assert r.status_code == 422
    problems = r.json()["detail"]["problems"]
    assert any("url" in p for p in problems) and any("events" in p for p in problems)
    assert api.get("/v1/webhooks/nope/deliveries").status_code == 404
    assert api.post("/v1/webhooks/nope/deliveries/x/redeliver").status_code == 404


def test_urls_that_would_reach_the_private_network_are_refused():
    for url in ("http://127.0.0.1:8000/h", "http://localhost/h", "http://10.1.2.3/h",
                "http://169.254.169.254/latest/meta-data", "http://[::1]/h",
                "http://192.168.0.1/h"):
        assert "non-public" in url_problem(url, allow_private=False) or \
            "loopback" in url_problem(url, allow_private=False), url
        assert url_problem(url, allow_private=True) is None
    for url in ("http://[::7f00:1]/", "http://[64:ff9b::a9fe:a9fe]/",  # IPv4 inside IPv6
                "http://[2002:a9fe:a9fe::1]/", "http://[::ffff:10.0.0.1]/",
                "http://2130706433/", "http://0x7f.1/", "http://127.1/"):  # numeric IPv4 forms
        assert "non-public" in url_problem(url, allow_private=False), url
    assert url_problem("http://8.8.8.8/hook", allow_private=False) is None
    assert url_problem("http://[2001:4860:4860::8888]/", allow_private=False) is None
    assert "credentials" in url_problem("http://u:p@example.com/", allow_private=False)
    assert "http" in url_problem("file:///etc/passwd", allow_private=False)
    assert "resolve" in url_problem("http://nonexistent.invalid/", allow_private=False,
                                    resolve=True)


@pytest.mark.parametrize("url, why", [
    # another spelling of a loopback host or address is judged like the plain one
    ("http://127.0.0.1.:8000/h", "non-public address (127.0.0.1)"),
    ("http://localhost.:8000/h", "loopback"),
    ("http://LOCALHOST/h", "loopback"),
    ("http://LocalHost./h", "loopback"),
    ("http://api.localhost./h", "loopback"),
    ("http://\uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54/h", "loopback"),  # fullwidth
    ("http://127\u30020\u30020\u30021/h", "non-public address (127.0.0.1)"),  # ideographic dots
    ("http://2130706433/", "non-public address (127.0.0.1)"),
    ("http://0x7f.1/", "non-public address (127.0.0.1)"),
    ("http://0X7F.0.0.1/", "non-public address (127.0.0.1)"),
    ("http://017700000001/", "non-public address (127.0.0.1)"),
    ("http://127.000.000.001/", "non-public address (127.0.0.1)"),
    ("http://0/", "non-public address (0.0.0.0)"),
    ("http://[::ffff:127.0.0.1]/", "non-public address (127.0.0.1)"),
    ("http://[::FFFF:a9fe:a9fe]/", "non-public address (169.254.169.254)"),
    # a public address must be written as itself
    ("http://8.8.8.8./", "write 8.8.8.8"),
    ("http://134744072/", "write 8.8.8.8"),
    ("http://0x08.0x08.0x08.0x08/", "write 8.8.8.8"),
    ("http://[::ffff:8.8.8.8]/", "write 8.8.8.8"),
    # no host name at all
    ("http://a..example.com/", "not a host name"),
    ("http://.example.com/", "not a host name"),
    ("http://example.com../", "not a host name"),
    ("http://%6cocalhost/", "not a host name"),
    ("http://08.0.0.1/", "no IPv4 address"),
    ("http://1.2.3.4.5/", "no IPv4 address"),
    ("http://example.0x/", "no IPv4 address"),
])
def test_unusual_spellings_of_hosts_are_refused(url, why):
    problem = url_problem(url, allow_private=False)
    assert problem is not None and why in problem, (url, problem)
    assert url_problem(url, allow_private=False, resolve=True) == problem  # and at delivery
    assert url_problem(url, allow_private=True) is None


@pytest.mark.parametrize("url", [
    "http://example.com./hook",  # a name with the DNS root's dot is still the name
    "https://Hooks.Example.COM:8443/x?y=1",  # letter case does not matter
    "http://b\u00fccher.example/", "http://under_score.example/", "http://1.example/",
    "http://8.8.8.8/", "http://[2001:4860:4860::8888]/"])
def test_ordinary_spellings_of_public_hosts_are_accepted(url):
    assert url_problem(url, allow_private=False) is None


def test_signature_is_the_standard_webhooks_scheme():
    secret = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = json.dumps({"type": "job.succeeded", "data": {"job_id": "j"}}).encode()
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(int(time.time()))}
    headers["webhook-signature"] = sign(secret, "msg_1", int(headers["webhook-timestamp"]), body)
    assert Webhook(secret).verify(body, headers)["data"]["job_id"] == "j"
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace(b'"j"', b'"k"'), headers)
    with pytest.raises(WebhookVerificationError):  # another endpoint's secret
        Webhook("whsec_" + "A" * 32).verify(body, headers)


def test_receivers_of_other_tenants_see_nothing(server):
    api = server.client
    hook = api.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/h",
                                           "events": ["job.failed"]}).json()
    assert api.post("/v1/tenants", json={"name": "other"}).status_code == 201
    other = api.post("/v1/keys", json={"tenant": "other", "scopes": ["read", "train"]})
    assert other.status_code == 201, other.text
    headers = {"Authorization": f"Bearer {other.json()['key']}"}
    url = str(api.base_url)
    assert httpx.get(f"{url}/v1/webhooks/{hook['id']}", headers=headers).status_code == 404
    assert httpx.get(f"{url}/v1/webhooks", headers=headers).json()["data"] == []
    assert httpx.delete(f"{url}/v1/webhooks/{hook['id']}", headers=headers).status_code == 404


def test_on_postgres_the_api_refuses_private_urls_and_keeps_tenants_apart(api):
    r = api.post("/v1/webhooks", json={"url": "http://169.254.169.254/latest/meta-data",
                                       "events": ["job.failed"]})
    assert r.status_code == 422 and r.json()["detail"]["problems"][0].startswith("url: ")
    for url in ("http://127.0.0.1.:9/h", "http://localhost.:9/h", "http://0x7f.1:9/h"):
        r = api.post("/v1/webhooks", json={"url": url, "events": ["job.failed"]})
        assert r.status_code == 422, (url, r.text)
    hook = api.post("/v1/webhooks", json={"url": "http://8.8.8.8/hook",
                                          "events": ["job.failed"]})
    assert hook.status_code == 201, hook.text
    hook_id = hook.json()["id"]
    other = {"Authorization": f"Bearer {new_key(api, ['read', 'train'], 'webhook-other')}"}
    assert api.get(f"/v1/webhooks/{hook_id}/deliveries", headers=other).status_code == 404
    assert api.post(f"/v1/webhooks/{hook_id}/deliveries/x/redeliver",
                    headers=other).status_code == 404
    assert api.delete(f"/v1/webhooks/{hook_id}").status_code == 204


def test_on_postgres_deliveries_back_off_then_fail(api, service_settings):
    """The sender's rounds on PostgreSQL (claims with SKIP LOCKED): a receiver answering 500
    is retried after the backoff, and the delivery fails after the last attempt."""
    from registry import crud
    from registry.db import get_engine, session_scope

    settings = service_settings.model_copy(update={
        "webhook_allow_private": True, "webhook_retry_seconds": 0.3,
        "webhook_max_attempts": 3})
    assert [retry_delay(settings, n) for n in (1, 2, 3)] == [0.3, 0.6, 1.2]
    assert retry_delay(settings.model_copy(update={"webhook_retry_seconds": 10}), 20) == 3600
    receiver = Receiver(free_port(), status=500).start()
    engine = get_engine(service_settings.sqlalchemy_url)
    try:
        with session_scope(engine) as s:
            tenant = crud.get_tenant_by_name(s, name="default")
            endpoint = crud.create_webhook(s, tenant_id=tenant.id, url=receiver.url,
                                           events=["job.failed"])
            receiver.secret, endpoint_id = endpoint.secret, endpoint.id
            crud.enqueue_webhook_event(s, tenant_id=tenant.id, event_type="job.failed",
                                       data={"job_id": "j1", "error": "out of memory"})
        with httpx.Client(timeout=5) as client:
            outcomes = [deliver_once(engine, settings, client)]
            outcomes.append(deliver_once(engine, settings, client))  # not due yet
            for wait in (0.35, 0.65):
                time.sleep(wait)
                outcomes.append(deliver_once(engine, settings, client))
        assert [o["retrying"] for o in outcomes] == [1, 0, 1, 0]
        assert outcomes[-1]["failed"] == 1
        with session_scope(engine) as s:
            row = crud.list_deliveries(s, endpoint_id=endpoint_id)[0]
            assert (row.status, row.attempts, row.last_status_code) == ("failed", 3, 500)
        assert len(receiver.received) == 3 and len({e["id"] for e in receiver.received}) == 1
        assert receiver.received[0]["data"]["error"] == "out of memory"
    finally:
        receiver.stop()
        with session_scope(engine) as s:
            crud.delete_webhook(s, webhook_id=endpoint_id, tenant_id=tenant.id)
