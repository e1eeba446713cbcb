"""The database goes away: every route that needs it answers 503 with Retry-After and a JSON
body (never a 500), and classification with a resident adapter keeps answering."""

from __future__ import annotations

import io

from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy.orm import sessionmaker

from api.app import create_app
from clipfit_core.data import Sample
from registry import crud
from registry.db import get_engine, make_engine, session_scope
from registry.migrate import upgrade
from registry.models import DEFAULT_TENANT
from registry.settings import Settings

CLOSED_PORT = "postgresql+psycopg://postgres@127.0.0.1:1/nothing?connect_timeout=2"


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (9, 9), (200, 0, 0)).save(buf, "PNG")
    return buf.getvalue()


def test_database_outage_is_503_and_a_resident_adapter_still_answers(tmp_path, tiny):
    from clipfit_core.delta import Delta, DeltaConfig, extract_delta
    from clipfit_core.params import mark_trainable

    settings = Settings(data_dir=tmp_path, base_models="clipfit-tiny", device="cpu")
    upgrade(settings.sqlalchemy_url)
    mark_trainable(tiny.model)
    tensors = extract_delta(tiny.model)
    tiny.model.requires_grad_(False)
    delta = Delta(tensors, DeltaConfig(base_model="clipfit-tiny",
                                       base_fingerprint=tiny.fingerprint,
                                       classnames=["red", "blue"], templates=["a {}."]))
    with session_scope(get_engine(settings.sqlalchemy_url)) as s:
        _, key = crud.create_key(s, tenant_id=DEFAULT_TENANT, scopes=["admin"])
        job = crud.create_job(s, tenant_id=DEFAULT_TENANT, classnames=["red", "blue"],
                              images=[Sample(png(), 0, "r.png")], base_model="clipfit-tiny",
                              templates=["a {}."], hyperparameters={})
        crud.mark_running(s, job_id=job.id)
        adapter_id = crud.store_adapter(s, job=job, weights=delta.to_bytes(),
                                        config=delta.config_dict(), metrics={}).id
    app = create_app(settings)
    client = TestClient(app, headers={"Authorization": f"Bearer {key}"})
    image = [("images", ("r.png", png(), "image/png"))]
    before = client.post("/v1/classify", data={"adapter_id": adapter_id}, files=image)
    assert before.status_code == 200, before.text

    app.state.context.sessions = sessionmaker(make_engine(CLOSED_PORT))  # the database is gone
    app.state.context.captures.forget(DEFAULT_TENANT, adapter_id)  # its capture rules: unread
    during = client.post("/v1/classify", data={"adapter_id": adapter_id}, files=image)
    assert during.status_code == 200 and during.json() == before.json()
    zero_shot = client.post("/v1/classify", files=image,
                            data={"base_model": "clipfit-tiny", "classes": "red,blue"})
    assert zero_shot.status_code == 200
    for method, url, extra in [
            ("GET", "/v1/jobs", {}), ("GET", f"/v1/jobs/{job.id}", {}),
            ("GET", f"/v1/adapters/{adapter_id}", {}), ("GET", "/v1/adapters", {}),
            ("POST", "/v1/jobs", {"files": image * 2, "data": {"labels": ["a", "b"]}}),
            ("POST", "/v1/classify", {"data": {"adapter_id": "0" * 32}, "files": image}),
            ("GET", "/v1/keys", {})]:
        r = client.request(method, url, **extra)
        assert r.status_code == 503, (method, url, r.status_code, r.text)
        assert r.headers["retry-after"] == "5" and "database is unavailable" in r.json()["detail"]
    assert client.get("/readyz").status_code == 503
