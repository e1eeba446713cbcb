"""Rate limits and quotas: 429 with Retry-After, and nothing stored by a refused job."""

from __future__ import annotations

from .conftest import image_files, new_key

TRAIN = {"base_model": "clipfit-tiny", "epochs": "1"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def small_job(colour_set) -> dict:
    files, labels = image_files(colour_set)
    return {"files": files[:2] + files[16:18],
            "data": {**TRAIN, "labels": labels[:2] + labels[16:18]}}


def test_requests_per_key_are_rate_limited(api, monkeypatch):
    monkeypatch.setattr(api.app.state.settings, "rate_limit", "5/minute")
    key, other = new_key(api, ["read"], tenant="rate"), new_key(api, ["read"], tenant="rate")
    answers = [api.get("/v1/jobs", headers=bearer(key)) for _ in range(7)]
    assert [r.status_code for r in answers] == [200] * 5 + [429] * 2
    assert 1 <= int(answers[-1].headers["Retry-After"]) <= 60
    assert "rate limit of 5/minute" in answers[-1].json()["detail"]
    assert api.get("/v1/jobs", headers=bearer(other)).status_code == 200  # per key


def test_jobs_in_flight_and_stored_adapters_per_tenant(api, colour_set, monkeypatch):
    key = new_key(api, ["train", "read"], tenant="busy")
    monkeypatch.setattr(api.app.state.settings, "max_active_jobs", 1)
    first = api.post("/v1/jobs", headers=bearer(key), **small_job(colour_set))
    assert first.status_code == 202
    second = api.post("/v1/jobs", headers=bearer(key), **small_job(colour_set))
    assert second.status_code == 429 and "the limit is 1" in second.json()["detail"]
    assert int(second.headers["Retry-After"]) > 0
    assert len(api.get("/v1/jobs", headers=bearer(key)).json()["data"]) == 1  # none stored
    api.post(f"/v1/jobs/{first.json()['id']}/cancel", headers=bearer(key))
    monkeypatch.setattr(api.app.state.settings, "max_adapters", 0)  # 0: no quota
    monkeypatch.setattr(api.app.state.settings, "max_active_jobs", 0)
    again = api.post("/v1/jobs", headers=bearer(key), **small_job(colour_set))
    assert again.status_code == 202
    monkeypatch.setattr(api.app.state.settings, "max_adapters", 1)  # the one in flight
    refused = api.post("/v1/jobs", headers=bearer(key), **small_job(colour_set))
    assert refused.status_code == 429 and "stored adapters" in refused.json()["detail"]
    api.post(f"/v1/jobs/{again.json()['id']}/cancel", headers=bearer(key))


def test_upload_bytes_per_key_and_day(api, colour_set, monkeypatch):
    key = new_key(api, ["train", "read"], tenant="uploads")
    job = small_job(colour_set)
    size = sum(len(f[1][1]) for f in job["files"])
    monkeypatch.setattr(api.app.state.settings, "upload_bytes_per_day", size * 2 + 10)
    ids = []
    for _ in range(2):
        r = api.post("/v1/jobs", headers=bearer(key), **job)
        assert r.status_code == 202
        ids.append(r.json()["id"])
    r = api.post("/v1/jobs", headers=bearer(key), **job)
    assert r.status_code == 429 and "bytes per day" in r.json()["detail"]
    assert int(r.headers["Retry-After"]) > 3600  # the day's window, not a second
    for job_id in ids:
        api.post(f"/v1/jobs/{job_id}/cancel", headers=bearer(key))
