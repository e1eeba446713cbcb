"""Webhooks and the version through ``clipfit.client`` and ``clipfit remote``, against a real
``clipfit serve`` whose in-process worker sends the deliveries to a receiver here."""

from __future__ import annotations

import json
import threading
import time
import typing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from clipfit.cli import main as clipfit_main
from clipfit.client import FINISHED, ApiError, Client
from clipfit_core.version import __version__
from tests.service.test_embedded import free_port

JOB_EVENTS = ["job.cancelled", "job.failed", "job.succeeded"]


class Receiver:
    """Answers 204 to every POST and records ``(webhook-id, body)``."""

    def __init__(self):
        self.port, self.received = free_port(), []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                receiver.received.append((self.headers["webhook-id"], body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def stop(self) -> None:
        self.http.shutdown()
        self.http.server_close()


def until(check, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)
    return result


@pytest.fixture(scope="module")
def delivered(url, key, colour_train):
    """An endpoint for the job events, after one job: (receiver, endpoint, job, delivery)."""
    receiver = Receiver()
    with Client(url, key) as cf:
        hook = cf.webhooks.create(receiver.url, JOB_EVENTS, description="job events")
        job = cf.jobs.create(colour_train, base_model="clipfit-tiny", epochs=1, batch_size=16)
        job = cf.jobs.wait(job.id, timeout=120)
        assert job.status in FINISHED
        delivery = until(lambda: next((d for d in cf.webhooks.deliveries(hook.id)
                                       if d.status == "succeeded"), None))
    yield receiver, hook, job, delivery
    receiver.stop()


def test_client_webhooks(url, key, delivered):
    receiver, hook, job, delivery = delivered
    assert hook.secret.startswith("whsec_") and hook.events == JOB_EVENTS
    assert delivery.event_type == f"job.{job.status}" and delivery.attempts == 1
    assert job.id in json.dumps(delivery.payload) and delivery.last_status_code == 204
    assert (delivery.id, delivery.payload) in receiver.received
    with Client(url, key) as cf:
        listed = cf.webhooks.list()
        assert hook.id in [w.id for w in listed]
        assert all(w.secret is None for w in listed)  # shown once, at creation
        got = cf.webhooks.get(hook.id)
        assert (got.url, got.events, got.description) == (receiver.url, JOB_EVENTS, "job events")

        again = cf.webhooks.redeliver(hook.id, delivery.id)
        assert again.id == delivery.id and again.status == "pending"
        until(lambda: [i for i, _ in receiver.received].count(delivery.id) == 2)

        with pytest.raises(ApiError) as e:
            cf.webhooks.create(receiver.url, ["job.exploded"])
        assert e.value.status == 422 and any("events" in p for p in e.value.problems)
        other = cf.webhooks.create(receiver.url, ["adapter.deleted"])
        cf.webhooks.delete(other.id)
        for call in (cf.webhooks.get, cf.webhooks.deliveries, cf.webhooks.delete):
            with pytest.raises(ApiError) as e:
                call(other.id)
            assert e.value.status == 404
        assert other.id not in [w.id for w in cf.webhooks.list()]


def test_remote_webhooks(url, key, delivered, capsys):
    receiver, hook, _, delivery = delivered

    def remote(*args: str) -> tuple[int, str, str]:
        code = clipfit_main(["remote", "--url", url, "--api-key", key, *args])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, err = remote("--json", "webhooks", "create", receiver.url, "--events",
                            "job.succeeded, job.failed", "--description", "from the cli")
    assert code == 0, err
    created = json.loads(out)
    assert created["secret"].startswith("whsec_")
    assert created["events"] == ["job.failed", "job.succeeded"]
    code, out, _ = remote("webhooks", "create", receiver.url, "--events", "adapter.deleted")
    assert code == 0 and "signing secret, shown only now: whsec_" in out
    table_id = out.split()[1]

    code, out, _ = remote("webhooks", "ls")
    lines = {line.split("\t")[0]: line for line in out.splitlines()}
    assert code == 0 and {hook.id, created["id"], table_id} <= set(lines)
    assert lines[created["id"]].split("\t")[1:] == [receiver.url, "job.failed,job.succeeded",
                                                    "from the cli"]
    code, out, _ = remote("--json", "webhooks", "show", created["id"])
    assert code == 0 and json.loads(out)["description"] == "from the cli"

    code, out, _ = remote("--json", "webhooks", "deliveries", hook.id)
    assert code == 0 and delivery.id in [d["id"] for d in json.loads(out)]
    code, out, _ = remote("webhooks", "deliveries", hook.id, "--limit", "1")
    assert code == 0 and len(out.splitlines()) == 1 and "attempts" in out
    code, out, _ = remote("webhooks", "redeliver", hook.id, delivery.id)
    assert code == 0 and f"delivery {delivery.id}" in out and "pending" in out

    for hook_id in (created["id"], table_id):
        code, out, _ = remote("webhooks", "rm", hook_id)
        assert code == 0 and f"deleted webhook {hook_id}" in out
    code, _, err = remote("webhooks", "show", created["id"])
    assert code == 1 and "the service refused: 404" in err
    code, _, err = remote("webhooks", "create", receiver.url, "--events", "job.exploded")
    assert code == 1 and "422" in err and "events" in err


def test_the_create_help_names_every_event(capsys):
    from api.schemas import WebhookEvent

    with pytest.raises(SystemExit):
        clipfit_main(["remote", "webhooks", "create", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(event in text for event in typing.get_args(WebhookEvent))


def test_the_version_without_a_key(url, key):
    with Client(url, key) as cf:
        assert cf.version() == {"version": __version__, "api": "v1"}
    assert httpx.get(f"{url}/v1/version").json() == {"version": __version__, "api": "v1"}
    health = httpx.get(f"{url}/healthz").json()
    assert health == {"status": "ok", "version": __version__}


def test_the_client_names_itself():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"data": []})

    http = httpx.Client(base_url="http://clipfit.test", transport=httpx.MockTransport(handler))
    assert Client(http=http, api_key="cfk_x").webhooks.list() == []
    assert seen[0].headers["User-Agent"] == f"clipfit-client/{__version__}"
    assert seen[0].headers["Authorization"] == "Bearer cfk_x"
