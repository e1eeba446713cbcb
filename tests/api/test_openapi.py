"""The published schema tells clients how to send what the routes read."""

from api.app import create_app
from registry.settings import Settings


def test_request_bodies_declare_their_content_types(tmp_path):
    schema = create_app(Settings(data_dir=tmp_path)).openapi()
    jobs = schema["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]
    assert list(jobs) == ["multipart/form-data"]  # files: a urlencoded body cannot carry them
    form = jobs["multipart/form-data"]["schema"]["properties"]
    assert form["lambda"]["default"] == 8.0 and form["val_fraction"]["maximum"] == 0.5
    assert form["dataset"]["anyOf"][0]["contentMediaType"] == "application/octet-stream"
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
