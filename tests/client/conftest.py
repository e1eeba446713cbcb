"""One ``clipfit serve`` (SQLite + in-process worker, clipfit-tiny) for the client's tests,
started as tests/service starts it, with webhooks allowed to reach receivers on 127.0.0.1."""

from __future__ import annotations

import pytest

from tests.service.test_embedded import Server, free_port


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("client-server")
    server = Server(root / "data", free_port(), root / "serve.log", env={
        "CLIPFIT_WEBHOOK_ALLOW_PRIVATE": "true",
        "CLIPFIT_WEBHOOK_INTERVAL_SECONDS": "0.2", "CLIPFIT_WEBHOOK_RETRY_SECONDS": "0.5"})
    server.wait_ready()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def url(server) -> str:
    return str(server.client.base_url)


@pytest.fixture(scope="session")
def key(server) -> str:
    """The admin key the server printed at its first start."""
    return server.client.headers["Authorization"].removeprefix("Bearer ")
