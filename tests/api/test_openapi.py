"""The published schema tells clients how to send what the routes read."""

import re
from datetime import UTC, datetime, timedelta, timezone

import pytest

from api.app import create_app
from api.schemas import CURSOR_PATTERN, decode_cursor, encode_cursor
from registry.settings import Settings


def test_request_bodies_declare_their_content_types(tmp_path):
    schema = create_app(Settings(data_dir=tmp_path)).openapi()
    jobs = schema["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]
    assert list(jobs) == ["multipart/form-data"]  # files: a urlencoded body cannot carry them
    form = jobs["multipart/form-data"]["schema"]["properties"]
    assert form["lambda"]["default"] == 8.0 and form["val_fraction"]["maximum"] == 0.5
    assert form["dataset"]["contentMediaType"] == "application/octet-stream"
    assert "null" not in str(form) and "None" not in str(form)  # a part is sent or not
    classify = schema["paths"]["/v1/classify"]["post"]["requestBody"]["content"]
    assert set(classify) == {"application/json", "multipart/form-data"}
    assert classify["application/json"]["schema"]["required"] == ["images"]
    assert classify["multipart/form-data"]["schema"]["properties"]["top_k"]["maximum"] == 1000


def test_closed_docs_need_a_key_with_read(tmp_path):
    from fastapi.testclient import TestClient

    from registry import crud
    from registry.db import get_engine, session_scope
    from registry.migrate import upgrade

    settings = Settings(data_dir=tmp_path, open_docs=False)
    upgrade(settings.sqlalchemy_url)
    with session_scope(get_engine(settings.sqlalchemy_url)) as session:
        _, reader = crud.create_key(session, tenant_id="default", scopes=["read"])
        _, trainer = crud.create_key(session, tenant_id="default", scopes=["train"])
    client = TestClient(create_app(settings))
    for url in ("/openapi.json", "/docs"):
        assert client.get(url).status_code == 401
        assert client.get(url, headers={"Authorization": f"Bearer {trainer}"}).status_code == 403
        assert client.get(url, headers={"Authorization": f"Bearer {reader}"}).status_code == 200
    assert client.get("/healthz").status_code == 200


def test_parameters_say_what_is_valid(tmp_path):
    """What the schema allows is accepted (schemathesis's positive_data_acceptance): an
    optional parameter is a value or absent, never null; enums and patterns are exact."""
    schema = create_app(Settings(data_dir=tmp_path)).openapi()
    paths = schema["paths"]

    def parameter(path, method, name):
        found = [p for p in paths[path][method]["parameters"] if p["name"] == name]
        return found[0]["schema"]

    assert parameter("/v1/jobs", "get", "status")["enum"] == \
        ["queued", "running", "succeeded", "failed", "cancelled"]
    assert parameter("/v1/jobs/{job_id}/events", "get", "last-event-id")["type"] == "integer"
    assert parameter("/v1/jobs", "post", "idempotency-key")["type"] == "string"
    for path in ("/v1/jobs", "/v1/adapters"):
        assert parameter(path, "get", "cursor")["pattern"] == CURSOR_PATTERN
    alias = schema["components"]["schemas"]["AliasSet"]
    assert [branch["required"] for branch in alias["oneOf"]] == [["version"], ["adapter_id"]]


@pytest.mark.parametrize("created_at", [
    datetime(2026, 11, 29, 6, 52, 18, 123456), datetime(2026, 11, 29, 6, 52, 18),
    datetime(1970, 1, 1), datetime(2026, 11, 29, 7, 52, 18, 5, tzinfo=timezone(timedelta(hours=1))),
])
def test_cursors_round_trip_and_match_their_pattern(created_at):
    cursor = encode_cursor(created_at, "3fc4e2c00c7b42dd9066b0cdadbfc31c")
    assert re.fullmatch(CURSOR_PATTERN, cursor), cursor
    naive_utc = created_at.astimezone(UTC).replace(tzinfo=None) if created_at.tzinfo \
        else created_at
    assert decode_cursor(cursor) == (naive_utc, "3fc4e2c00c7b42dd9066b0cdadbfc31c")
    assert decode_cursor("9" * 17 + ".x")[1] == "x"  # every string the pattern allows


def test_405_lists_every_method_of_the_path(tmp_path):
    """Starlette's 405 names only the methods of the first route that matched the path."""
    from fastapi.testclient import TestClient

    client = TestClient(create_app(Settings(data_dir=tmp_path, auth=False)))
    for method, path, allowed in [("OPTIONS", "/v1/keys", "GET, POST"),
                                  ("OPTIONS", "/v1/tenants", "GET, POST"),
                                  ("PATCH", "/v1/adapters/x", "GET, DELETE"),
                                  ("OPTIONS", "/v1/datasets/x", "GET, DELETE"),
                                  ("OPTIONS", "/v1/webhooks/x", "GET, DELETE"),
                                  ("OPTIONS", "/v1/aliases/prod", "PUT, DELETE")]:
        r = client.request(method, path)
        assert r.status_code == 405 and r.headers["allow"] == allowed, (method, path)
        assert r.json()["code"] == "method_not_allowed"
