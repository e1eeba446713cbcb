"""Versions per name and aliases (name@alias) through the service (PostgreSQL): adapters are
brought in by import, so no training is needed."""

from __future__ import annotations

import pytest

from bench.replicas import delta_zip
from clipfit_core.models import create_base_model

from .conftest import image_files, new_key


def _delta_zip(base, seed: int, classnames: list[str]) -> bytes:
    """A random delta of ``base`` (clipfit-tiny) over ``classnames``, as a download gives."""
    return delta_zip(seed, classnames, base=base)


@pytest.fixture(scope="module")
def versions(api):
    base = create_base_model("clipfit-tiny")
    made = []
    for seed, name in [(1, "shades"), (2, "shades"), (3, "other")]:
        r = api.post("/v1/adapters", data={"name": name}, files={
            "file": ("d.zip", _delta_zip(base, seed, ["red", "green", "blue", "yellow"]))})
        assert r.status_code == 201, r.text
        made.append(r.json())
    return made


def _answer(api, colour_set, adapter: str) -> list:
    files, _ = image_files(colour_set)
    r = api.post("/v1/classify", data={"adapter": adapter, "top_k": "4"}, files=files[::8])
    assert r.status_code == 200, r.text
    return [p["top_k"] for p in r.json()["predictions"]]


def test_versions_number_each_name_and_are_never_reused(api, versions, colour_set):
    assert [(a["name"], a["version"]) for a in versions] == \
        [("shades", 1), ("shades", 2), ("other", 1)]
    base = create_base_model("clipfit-tiny")
    third = api.post("/v1/adapters", data={"name": "other"}, files={
        "file": ("d.zip", _delta_zip(base, 4, ["red", "green"]))}).json()
    assert third["version"] == 2
    assert api.delete(f"/v1/adapters/{third['id']}").status_code == 204
    again = api.post("/v1/adapters", data={"name": "other"}, files={
        "file": ("d.zip", _delta_zip(base, 5, ["red", "green"]))}).json()
    assert again["version"] == 3  # other@2 was deleted: its number is not given again
    files, _ = image_files(colour_set)
    for reference in ("other@2", "other@\u00b2", "other@" + "9" * 30):
        r = api.post("/v1/classify", data={"adapter": reference}, files=files[:1])
        assert r.status_code == 404, (reference, r.text)  # never a 500
    assert api.delete(f"/v1/adapters/{again['id']}").status_code == 204


def test_an_alias_moves_in_one_step_and_rolls_back(api, versions, colour_set):
    v1, v2 = versions[0], versions[1]
    by_id = {v["version"]: _answer(api, colour_set, v["id"]) for v in (v1, v2)}
    assert by_id[1] != by_id[2]  # the two versions answer differently
    assert _answer(api, colour_set, "shades@2") == by_id[2]

    r = api.put("/v1/aliases/production", json={"name": "shades", "version": 1})
    assert r.status_code == 200, r.text
    assert r.json()["adapter_id"] == v1["id"] and r.json()["reference"] == "shades@production"
    assert _answer(api, colour_set, "shades@production") == by_id[1]

    engine = api.app.state.inference
    misses = engine.delta_misses
    r = api.put("/v1/aliases/production", json={"name": "shades", "version": 2})
    assert r.json()["version"] == 2
    assert _answer(api, colour_set, "shades@production") == by_id[2]  # at once
    assert _answer(api, colour_set, v1["id"]) == by_id[1]  # the old version still serves...
    assert engine.delta_misses == misses  # ...from memory: the move evicted nothing
    api.put("/v1/aliases/production", json={"name": "shades", "adapter_id": v1["id"]})
    assert _answer(api, colour_set, "shades@production") == by_id[1]  # rolled back

    listed = api.get("/v1/aliases", params={"name": "shades"}).json()["data"]
    assert [(a["alias"], a["version"]) for a in listed] == [("production", 1)]
    # the adapter an alias points at cannot be deleted until the alias moves or goes
    r = api.delete(f"/v1/adapters/{v1['id']}")
    assert r.status_code == 409 and "shades@production" in r.text
    assert api.delete("/v1/aliases/production", params={"name": "shades"}).status_code == 204
    assert api.get("/v1/aliases").json()["data"] == []


def test_alias_refusals(api, versions, colour_set):
    other = versions[2]
    for alias, body, status, words in [
        ("3", {"name": "shades", "version": 1}, 422, "pattern"),
        ("Prod", {"name": "shades", "version": 1}, 422, "pattern"),
        ("staging", {"name": "shades"}, 422, "either version or adapter_id"),
        ("staging", {"name": "shades", "version": 1, "adapter_id": other["id"]}, 422,
         "either version or adapter_id"),  # the schema's oneOf: exactly one of them
        ("staging", {"name": "shades", "version": 1, "adapter_id": ""}, 422,
         "adapter_id: String should have at least 1 character"),
        ("staging", {"name": "shades", "version": 9}, 404, "not found"),
        ("staging", {"name": "shades", "adapter_id": other["id"]}, 422, "is named 'other'"),
    ]:
        r = api.put(f"/v1/aliases/{alias}", json=body)
        assert r.status_code == status and words in r.text, (alias, body, r.text)
    files, _ = image_files(colour_set)
    r = api.post("/v1/classify", data={"adapter": "shades@nowhere"}, files=files[:1])
    assert r.status_code == 404
    r = api.post("/v1/classify", data={"adapter": "shades@1", "adapter_id": "shades@2"},
                 files=files[:1])
    assert r.status_code == 422 and "not two different adapters" in r.text
    # another tenant sees none of it
    api.put("/v1/aliases/live", json={"name": "shades", "version": 1})
    stranger = {"Authorization": f"Bearer {new_key(api, ['admin'], tenant='strangers')}"}
    assert api.get("/v1/aliases", headers=stranger).json()["data"] == []
    r = api.post("/v1/classify", data={"adapter": "shades@live"}, files=files[:1],
                 headers=stranger)
    assert r.status_code == 404
    api.delete("/v1/aliases/live", params={"name": "shades"})


def test_every_route_that_names_an_adapter_takes_a_reference(api, versions):
    """An id, name@VERSION and name@alias name the same adapter on show, evaluation,
    download and delete, as they do on classify."""
    v2 = versions[1]
    api.put("/v1/aliases/canary", json={"name": "shades", "version": 2})
    for reference in (v2["id"], "shades@2", "shades@canary"):
        r = api.get(f"/v1/adapters/{reference}")
        assert r.status_code == 200 and r.json()["id"] == v2["id"], (reference, r.text)
        r = api.get(f"/v1/adapters/{reference}/download")
        assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
        assert v2["id"] in r.headers["content-disposition"]
        r = api.get(f"/v1/adapters/{reference}/evaluation")  # imported without a report
        assert r.status_code == 404 and "no evaluation report" in r.json()["message"]
    for reference in ("shades@9", "shades@nowhere", "nobody@1"):
        assert api.get(f"/v1/adapters/{reference}").status_code == 404
    r = api.delete("/v1/adapters/shades@canary")  # the alias still points at it
    assert r.status_code == 409 and "shades@canary" in r.json()["message"]
    stranger = {"Authorization": f"Bearer {new_key(api, ['admin'], tenant='strangers')}"}
    assert api.get("/v1/adapters/shades@2", headers=stranger).status_code == 404
    assert api.delete("/v1/aliases/canary", params={"name": "shades"}).status_code == 204


def test_every_error_has_one_shape(api, colour_set):
    """code, message and problems on every 4xx, with 0.1's detail kept beside them."""
    files, _ = image_files(colour_set)
    answers = {
        "not_found": api.get("/v1/jobs/nope"),
        "invalid": api.post("/v1/classify", data={"top_k": "0"}, files=files[:1]),
        "unauthorized": api.get("/v1/jobs", headers={"Authorization": "Bearer cfk_wrong"}),
    }
    r = api.put("/v1/aliases/pin", json={"name": "shades", "version": 1})
    assert r.status_code == 200, r.text
    answers["conflict"] = api.delete(f"/v1/adapters/{r.json()['adapter_id']}")
    api.delete("/v1/aliases/pin", params={"name": "shades"})
    for code, r in answers.items():
        body = r.json()
        assert body["code"] == code, (code, body)
        assert isinstance(body["message"], str) and body["message"]
        assert isinstance(body["problems"], list)
        if code == "invalid":
            assert r.status_code == 422 and body["problems"]
            assert body["detail"] == {"message": body["message"], "problems": body["problems"]}
        else:
            assert body["detail"] == body["message"] and body["problems"] == []
