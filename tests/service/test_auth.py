"""Tenants and API keys: another tenant's ids answer 404 like unknown ones, a key without the
scope answers 403, no key (or a bad or revoked one) answers 401."""

from __future__ import annotations

import pytest

from .conftest import image_files, new_key

TRAIN = {"base_model": "clipfit-tiny", "epochs": "1"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def tenants(api, colour_set):
    """Tenant A with a job and an adapter; keys of A and B for every scope, and a read-only
    key of A."""
    from registry import crud

    keys = {"a": new_key(api, ["train", "classify", "read"], tenant="tenant-a"),
            "b": new_key(api, ["train", "classify", "read"], tenant="tenant-b"),
            "a_read": new_key(api, ["read"], tenant="tenant-a")}
    files, labels = image_files(colour_set)
    job = api.post("/v1/jobs", files=files[:4] + files[16:20],
                   data={**TRAIN, "labels": labels[:4] + labels[16:20]},
                   headers=bearer(keys["a"])).json()
    done = api.post("/v1/jobs", files=files[:4] + files[16:20],
                    data={**TRAIN, "labels": labels[:4] + labels[16:20]},
                    headers=bearer(keys["a"])).json()
    with api.app.state.context.sessions() as s:  # an adapter of A's (its weights are not used here)
        row = crud.get_job(s, job_id=done["id"])
        crud.mark_running(s, job_id=row.id)
        adapter = crud.store_adapter(s, job=row, weights=b"not-used", metrics={}, config={
            "base_model": "clipfit-tiny", "base_fingerprint": "0" * 64,
            "classnames": ["a", "b"], "templates": ["a photo of a {}."]})
        s.commit()
        adapter_id = adapter.id
    return keys, job["id"], adapter_id


def routes(job_id: str, adapter_id: str, red: bytes) -> list[tuple[str, str, dict]]:
    image = [("images", ("r.png", red, "image/png"))]
    return [
        ("GET", f"/v1/jobs/{job_id}", {}),
        ("GET", f"/v1/jobs/{job_id}/events", {}),
        ("GET", f"/v1/jobs/{job_id}/events?stream=true", {}),
        ("POST", f"/v1/jobs/{job_id}/cancel", {}),
        ("GET", f"/v1/adapters/{adapter_id}", {}),
        ("GET", f"/v1/adapters/{adapter_id}/download", {}),
        ("DELETE", f"/v1/adapters/{adapter_id}", {}),
        ("POST", "/v1/classify", {"data": {"adapter_id": adapter_id}, "files": image}),
    ]


def test_another_tenants_ids_are_unknown(api, tenants, colour_set):
    keys, job_id, adapter_id = tenants
    red = (colour_set / "red" / "0000.png").read_bytes()
    for method, url, extra in routes(job_id, adapter_id, red):
        theirs = api.request(method, url, headers=bearer(keys["b"]), **extra)
        unknown = api.request(method, url.replace(job_id, "0" * 32).replace(adapter_id, "1" * 32),
                              headers=bearer(keys["b"]), **extra)
        assert theirs.status_code == unknown.status_code == 404, (method, url, theirs.text)
        assert theirs.json()["detail"].split()[0] == unknown.json()["detail"].split()[0]
    listed = api.get("/v1/jobs", headers=bearer(keys["b"])).json()["data"]
    assert job_id not in {j["id"] for j in listed}
    assert adapter_id not in {a["id"] for a in
                              api.get("/v1/adapters", headers=bearer(keys["b"])).json()["data"]}
    # and the owner still sees them
    assert api.get(f"/v1/jobs/{job_id}", headers=bearer(keys["a"])).status_code == 200
    assert api.get(f"/v1/adapters/{adapter_id}", headers=bearer(keys["a"])).status_code == 200


def test_scopes_are_enforced(api, tenants, colour_set):
    keys, job_id, adapter_id = tenants
    red = (colour_set / "red" / "0000.png").read_bytes()
    reader = bearer(keys["a_read"])
    assert api.get(f"/v1/jobs/{job_id}", headers=reader).status_code == 200
    for method, url, extra in [r for r in routes(job_id, adapter_id, red) if r[0] != "GET"] + [
            ("POST", "/v1/jobs", {"data": TRAIN}), ("GET", "/v1/keys", {}),
            ("POST", "/v1/tenants", {"json": {"name": "x"}})]:
        r = api.request(method, url, headers=reader, **extra)
        assert r.status_code == 403 and "lacks the" in r.json()["detail"], (method, url, r.text)


def test_metrics_are_for_operators(api, tenants, monkeypatch):
    """/metrics counts every tenant's jobs: a tenant's keys (any scope but admin) get 403."""
    keys, _, _ = tenants
    for name in ("a_read", "a", "b"):
        r = api.get("/metrics", headers=bearer(keys[name]))
        assert r.status_code == 403 and "'admin' scope" in r.json()["message"], (name, r.text)
        assert "clipfit_jobs" not in r.text
    r = api.get("/metrics")  # the admin key
    assert r.status_code == 200 and "clipfit_jobs{" in r.text
    monkeypatch.setattr(api.app.state.settings, "open_metrics", True)  # the operator's choice
    assert api.get("/metrics", headers={"Authorization": ""}).status_code == 200


def test_no_bad_or_revoked_key_is_401(api, tenants, colour_set):
    keys, job_id, adapter_id = tenants
    red = (colour_set / "red" / "0000.png").read_bytes()
    revoked = new_key(api, ["read"], tenant="tenant-a")
    created = api.get("/v1/keys").json()["data"]
    revoked_id = next(k["id"] for k in created if revoked.startswith(k["prefix"])
                      and k["revoked_at"] is None and k["scopes"] == ["read"])
    assert api.delete(f"/v1/keys/{revoked_id}").status_code == 204
    for headers in ({"Authorization": ""}, bearer("cfk_nonsense"), bearer(revoked),
                    {"Authorization": "", "X-API-Key": "wrong"}):
        for method, url, extra in routes(job_id, adapter_id, red) + [
                ("GET", "/v1/jobs", {}), ("POST", "/v1/jobs", {"data": TRAIN}),
                ("GET", "/metrics", {})]:
            r = api.request(method, url, headers=headers, **extra)
            assert r.status_code == 401, (headers, method, url, r.text)
            assert r.headers.get("www-authenticate") == "Bearer"
    assert api.get("/v1/jobs", headers={"Authorization": "", "X-API-Key": keys["a"]}
                   ).status_code == 200
    for url in ("/healthz", "/readyz", "/openapi.json"):  # open: probes and the schema
        assert api.get(url, headers={"Authorization": ""}).status_code == 200, url


def test_idempotency_keys_are_per_tenant_and_bound_to_the_request(api, tenants, colour_set):
    keys, _, _ = tenants
    files, labels = image_files(colour_set)
    send = {"files": files[:4] + files[16:20],
            "data": {**TRAIN, "labels": labels[:4] + labels[16:20]}}
    key = {"Idempotency-Key": "shared-key"}
    a1 = api.post("/v1/jobs", headers=bearer(keys["a"]) | key, **send).json()
    a2 = api.post("/v1/jobs", headers=bearer(keys["a"]) | key, **send).json()
    b1 = api.post("/v1/jobs", headers=bearer(keys["b"]) | key, **send).json()
    assert a1["id"] == a2["id"] != b1["id"]  # B's key of the same name is B's own
    other = {**send, "data": {**send["data"], "epochs": "2"}}
    r = api.post("/v1/jobs", headers=bearer(keys["a"]) | key, **other)
    assert r.status_code == 422 and "different request" in r.text
    for job in (a1, b1):
        api.post(f"/v1/jobs/{job['id']}/cancel")


def test_admins_manage_tenants_and_keys(api):
    assert api.post("/v1/tenants", json={"name": "team-x"}).status_code == 201
    assert api.post("/v1/tenants", json={"name": "team-x"}).status_code == 409
    assert api.post("/v1/tenants", json={"name": "../bad"}).status_code == 422
    r = api.post("/v1/keys", json={"tenant": "team-x", "scopes": ["classify", "read"],
                                   "name": "ci"})
    assert r.status_code == 201
    created = r.json()
    assert created["key"].startswith(created["prefix"]) and created["tenant"] == "team-x"
    listed = {k["id"]: k for k in api.get("/v1/keys").json()["data"]}
    assert listed[created["id"]]["scopes"] == ["classify", "read"]
    assert "key" not in listed[created["id"]]  # the secret is never shown again
    assert api.get("/v1/jobs", headers=bearer(created["key"])).json()["data"] == []
    assert api.post("/v1/keys", json={"tenant": "nobody", "scopes": ["read"]}).status_code == 404
    assert api.post("/v1/keys", json={"tenant": "team-x", "scopes": ["root"]}).status_code == 422
