"""Capture and review through the API (PostgreSQL, Redis, clipfit-tiny): the rules, caps,
retention, the tenant's capture quota, tenants kept apart, labelling one by one and in bulk.
Adapters are brought in by import, so no training is needed; each test names its own, so
that its lineage starts empty."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select

from registry.models import Blob, Capture, utcnow

from .conftest import collect_released, new_key
from .test_aliases import _delta_zip

CLASSES = ["red", "green", "blue", "yellow"]


@pytest.fixture
def make_adapter(api, tiny):
    def make(name: str | None = "fresh", *, seed: int = 1, key: str | None = None) -> dict:
        data = {"name": f"{name}-{uuid.uuid4().hex[:8]}"} if name else {}
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        r = api.post("/v1/adapters", data=data, headers=headers,
                     files={"file": ("d.zip", _delta_zip(tiny, seed, CLASSES))})
        assert r.status_code == 201, r.text
        return r.json()

    return make


@pytest.fixture(scope="module")
def files(colour_set):
    """Every colour image as a multipart file with a name of its own."""
    out = []
    for folder in sorted(p for p in colour_set.iterdir() if p.is_dir()):
        for path in sorted(folder.iterdir())[:4]:
            out.append(("images", (f"{folder.name}-{path.name}", path.read_bytes(),
                                   "image/png")))
    return out  # 16 images


def classify(api, ref: str, files, headers=None, **options) -> list[dict]:
    r = api.post("/v1/classify", data={"adapter": ref, **options}, files=files,
                 headers=headers or {})
    assert r.status_code == 200, r.text
    return r.json()["predictions"]


def flush(api) -> None:
    api.app.state.context.captures.flush()


def listed(api, ref: str, headers=None, **params) -> list[dict]:
    r = api.get(f"/v1/adapters/{ref}/captures", params=params, headers=headers or {})
    assert r.status_code == 200, r.text
    return r.json()["data"]


def capture_on(api, ref: str, **rules) -> dict:
    r = api.put(f"/v1/adapters/{ref}/capture", json=rules)
    assert r.status_code == 200, r.text
    return r.json()


def test_nothing_is_captured_without_the_setting(api, make_adapter, files):
    adapter = make_adapter()
    r = api.get(f"/v1/adapters/{adapter['id']}/capture")
    assert r.status_code == 200 and r.json()["enabled"] is False
    assert r.json()["lineage"] == adapter["name"]
    classify(api, adapter["id"], files, reject_unknown="true", threshold="0.99")
    flush(api)
    assert listed(api, adapter["id"]) == []


def test_classify_answers_the_same_with_capture_on(api, make_adapter, files):
    adapter = make_adapter()
    before = classify(api, adapter["id"], files, top_k="4")
    capture_on(api, adapter["id"], sample_rate=1.0, unknown=True, below_confidence=0.9)
    after = classify(api, adapter["id"], files, top_k="4")
    assert after == before
    flush(api)
    assert len(listed(api, adapter["id"])) == len(files)


@pytest.mark.parametrize("rule", ["unknown", "below_confidence", "classes", "sample_rate"])
def test_each_rule_keeps_what_it_names_and_only_that(api, make_adapter, files, rule):
    adapter = make_adapter()
    ref = f"{adapter['name']}@{adapter['version']}"
    answers = classify(api, ref, files)
    cut, options = _middle([a["top_k"][0]["prob"] for a in answers]), {}
    if rule == "unknown":  # about half the answers unknown
        rules, options = {"unknown": True}, {"threshold": str(cut)}
        expected = [a["top_k"][0]["prob"] < cut for a in answers]
    elif rule == "below_confidence":
        rules, expected = {"below_confidence": cut}, [a["top_k"][0]["prob"] < cut
                                                      for a in answers]
    elif rule == "classes":
        wanted = answers[0]["label"]
        rules, expected = {"classes": [wanted]}, [a["label"] == wanted for a in answers]
    else:
        rules, expected = {"sample_rate": 1.0}, [True] * len(answers)
    capture_on(api, ref, **rules)
    again = classify(api, ref, files, **options)
    flush(api)
    kept = listed(api, adapter["id"], limit=200)
    names = [name for _, (name, _, _) in files]
    assert sorted(c["filename"] for c in kept) == sorted(
        n for n, keep in zip(names, expected) if keep)
    assert 0 < len(kept) and {c["rule"] for c in kept} == {rule}
    by_name = {c["filename"]: c for c in kept}
    for name, answer in zip(names, again):
        if name in by_name:  # the answer the caller got, and the version that gave it
            c = by_name[name]
            assert (c["predicted"], c["unknown"], c["adapter_id"], c["state"]) == (
                answer["label"], answer["unknown"], adapter["id"], "pending")
            assert c["top_k"] == answer["top_k"]
            assert c["confidence"] == answer["top_k"][0]["prob"]


def _middle(probs: list[float]) -> float:
    """A cut between two of the probabilities near their median (never on one of them)."""
    probs = sorted(probs)
    for k in sorted(range(1, len(probs)), key=lambda k: abs(k - len(probs) // 2)):
        if probs[k] - probs[k - 1] > 1e-5:
            return (probs[k] + probs[k - 1]) / 2
    raise AssertionError(f"the answers are all alike: {probs}")


def _png(seed: int | None = None) -> bytes:
    """A small PNG no other test sends (its colour drawn from ``seed``, else at random)."""
    import io
    import random

    from PIL import Image

    rng = random.Random(seed)
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), tuple(rng.randrange(256) for _ in range(3))).save(buf, "PNG")
    return buf.getvalue()


def _unique_files(n: int) -> list:
    return [("images", (f"unique-{i}.png", _png(), "image/png")) for i in range(n)]


def test_rules_fire_in_order_and_sample_at_their_rate():
    from service.capture_rules import CaptureRules

    answer = {"label": "unknown", "unknown": True, "top_k": [{"label": "red", "prob": 0.3}]}
    every = CaptureRules(unknown=True, below_confidence=0.5, classes=("red",), sample_rate=1)
    assert every.fired(answer) == "unknown"
    assert CaptureRules(below_confidence=0.5, classes=("red",)).fired(answer) == \
        "below_confidence"
    assert CaptureRules(classes=("red",)).fired(answer) is None  # the answer was unknown
    sure = {"label": "red", "unknown": False, "top_k": [{"label": "red", "prob": 0.9}]}
    assert CaptureRules(below_confidence=0.5, classes=("red",)).fired(sure) == "classes"
    rules = CaptureRules(sample_rate=0.25)
    assert [rules.fired(sure, draw) for draw in (0.1, 0.24, 0.25, 0.9)] == \
        ["sample_rate", "sample_rate", None, None]
    assert 150 < sum(rules.fired(sure) is not None for _ in range(1000)) < 350


def test_an_alias_setting_captures_only_requests_through_the_alias(api, make_adapter, files):
    adapter = make_adapter()
    name = adapter["name"]
    assert api.put("/v1/aliases/production", json={"name": name, "version": 1}).status_code \
        == 200
    capture_on(api, name + "@1", alias="production", sample_rate=1.0)
    classify(api, adapter["id"], files[:2])
    classify(api, f"{name}@1", files[2:4])
    classify(api, f"{name}@production", files[4:7])
    flush(api)
    assert sorted(c["filename"] for c in listed(api, adapter["id"])) == \
        sorted(name for _, (name, _, _) in files[4:7])


def test_later_versions_of_a_name_keep_capturing(api, make_adapter, tiny, files):
    first = make_adapter()
    capture_on(api, first["id"], sample_rate=1.0)
    r = api.post("/v1/adapters", data={"name": first["name"]},
                 files={"file": ("d.zip", _delta_zip(tiny, 7, CLASSES))})
    second = r.json()
    assert second["version"] == 2
    classify(api, second["id"], files[:3])
    flush(api)
    kept = listed(api, f"{first['name']}@1")
    assert {c["adapter_id"] for c in kept} == {second["id"]} and len(kept) == 3
    assert api.get(f"/v1/adapters/{second['id']}/capture").json()["enabled"] is True


def test_caps_per_hour_and_per_day(api, make_adapter, files):
    writer = api.app.state.context.captures
    for cap in ("max_per_hour", "max_per_day"):
        adapter = make_adapter()
        capture_on(api, adapter["id"], sample_rate=1.0, **{cap: 3})
        skipped = writer.skipped["cap"]
        classify(api, adapter["id"], files[:5])
        classify(api, adapter["id"], files[5:7])
        flush(api)
        assert len(listed(api, adapter["id"])) == 3, cap
        assert writer.skipped["cap"] == skipped + 4


def test_expired_captures_are_swept_with_their_images(api, make_adapter, db_session):
    adapter = make_adapter(name=None)
    capture_on(api, adapter["id"], sample_rate=1.0, retention_days=2)
    classify(api, adapter["id"], _unique_files(2))
    flush(api)
    kept = listed(api, adapter["id"])
    assert len(kept) == 2
    assert kept[0]["expires_at"] > kept[0]["created_at"]
    writer = api.app.state.context.captures
    assert writer.sweep(now=utcnow() + timedelta(days=1)) == 0
    assert writer.sweep(now=utcnow() + timedelta(days=2, minutes=1)) >= 2
    assert listed(api, adapter["id"]) == []
    digests = [c["sha256"] for c in kept]
    # released: nothing names them, and the collector deletes them after its grace period
    blobs = api.app.state.context.blobs
    assert len(db_session.scalars(select(Blob.sha256).where(Blob.sha256.in_(digests))).all()) == 2
    collect_released(api)
    assert db_session.scalars(select(Blob.sha256).where(Blob.sha256.in_(digests))).all() == []
    assert [blobs.stat(d) for d in digests] == [None, None]


def test_the_tenant_capture_quota_skips_never_refuses(api, make_adapter, files, monkeypatch):
    key = new_key(api, ["admin"], tenant=f"quota-{uuid.uuid4().hex[:6]}")
    headers = {"Authorization": f"Bearer {key}"}
    adapter = make_adapter(key=key)
    assert api.put(f"/v1/adapters/{adapter['id']}/capture", json={"sample_rate": 1.0},
                   headers=headers).status_code == 200
    one = files[0][1][1]
    monkeypatch.setattr(api.app.state.context.settings, "capture_bytes_per_tenant",
                        len(one) + 10)
    writer = api.app.state.context.captures
    skipped = writer.skipped["quota"]
    classify(api, adapter["id"], files[:1], headers)
    flush(api)
    classify(api, adapter["id"], files[1:3], headers)  # over the quota: answered, skipped
    flush(api)
    classify(api, adapter["id"], files[:1], headers)  # the same bytes again: no more room used
    flush(api)
    kept = listed(api, adapter["id"], headers)
    assert [c["filename"] for c in kept] == [files[0][1][0]] * 2
    assert len({c["sha256"] for c in kept}) == 1
    assert writer.skipped["quota"] == skipped + 2


def test_the_quota_sum_is_recounted_only_now_and_then(api, make_adapter, files, monkeypatch):
    """The tenant's bytes are summed in the database once per QUOTA_RECOUNT_SECONDS (the sum
    visits every capture of the tenant); in between, the writer adds what it stored."""
    from registry import captures as capture_rows
    from service import capture_writer

    key = new_key(api, ["admin"], tenant=f"recount-{uuid.uuid4().hex[:6]}")
    headers = {"Authorization": f"Bearer {key}"}
    adapter = make_adapter(key=key)
    assert api.put(f"/v1/adapters/{adapter['id']}/capture", json={"sample_rate": 1.0},
                   headers=headers).status_code == 200
    sums, real = [], capture_rows.capture_bytes

    def counted(session, *, tenant_id: str) -> int:
        sums.append(tenant_id)
        return real(session, tenant_id=tenant_id)

    monkeypatch.setattr(capture_rows, "capture_bytes", counted)
    classify(api, adapter["id"], files[:4], headers)
    flush(api)
    tenant = sums[0]
    assert sums == [tenant] and len(listed(api, adapter["id"], headers)) == 4  # 4 images, 1 sum
    writer = api.app.state.context.captures
    with api.app.state.context.sessions() as s:
        assert writer._tenant_bytes[tenant][0] == real(s, tenant_id=tenant)
    monkeypatch.setattr(capture_writer, "QUOTA_RECOUNT_SECONDS", 0.0)
    classify(api, adapter["id"], files[4:6], headers)
    flush(api)
    assert sums.count(tenant) == 3  # recounted for each new image once the window is 0


def test_a_full_queue_drops_and_counts(api, make_adapter, files, monkeypatch):
    adapter = make_adapter()
    capture_on(api, adapter["id"], sample_rate=1.0)
    writer = api.app.state.context.captures
    monkeypatch.setattr(writer, "max_queued_bytes", 0)
    dropped = writer.skipped["queue_full"]
    classify(api, adapter["id"], files[:3])
    flush(api)
    assert listed(api, adapter["id"]) == []
    assert writer.skipped["queue_full"] == dropped + 3
    metrics = api.get("/metrics").text
    assert f'clipfit_captures_skipped_total{{reason="queue_full"}} {dropped + 3}.0' in metrics
    assert "clipfit_captures_written_total" in metrics


def test_invalid_rules_are_named_together(api, make_adapter):
    named, unnamed = make_adapter(), make_adapter(name=None)
    r = api.put(f"/v1/adapters/{unnamed['id']}/capture", json={
        "sample_rate": 1.5, "below_confidence": -0.1, "classes": ["red", "purple", "red"],
        "max_per_hour": -1, "max_per_day": 10**9, "retention_days": 0, "alias": "production"})
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["code"] == "invalid"
    problems = " | ".join(body["problems"])
    for name in ("sample_rate", "below_confidence", "'purple'", "named twice", "max_per_hour",
                 "max_per_day", "retention_days", "alias: this adapter has no name"):
        assert name in problems, (name, problems)
    r = api.put(f"/v1/adapters/{named['id']}/capture", json={"alias": "Not An Alias",
                                                              "unknown": False})
    assert r.status_code == 422
    assert any("alias" in p for p in r.json()["problems"])
    assert any("no rule can fire" in p for p in r.json()["problems"])
    r = api.put(f"/v1/adapters/{named['id']}/capture", json={"sample_rat": 0.5})
    assert r.status_code == 422 and "sample_rat" in r.text
    assert api.get(f"/v1/adapters/{named['id']}/capture").json()["enabled"] is False


def test_setting_reading_and_turning_off(api, make_adapter, files):
    adapter = make_adapter()
    body = capture_on(api, adapter["id"], below_confidence=0.5, classes=["red"],
                      max_per_day=100)
    assert body | {"updated_at": None} == {
        "adapter_id": adapter["id"], "lineage": adapter["name"], "enabled": True,
        "alias": None, "sample_rate": None, "below_confidence": 0.5, "unknown": False,
        "classes": ["red"], "max_per_hour": None, "max_per_day": 100, "retention_days": 30,
        "retrain_after": None, "promote": "manual", "updated_at": None}
    assert api.get(f"/v1/adapters/{adapter['id']}/capture").json() == body
    assert api.delete(f"/v1/adapters/{adapter['id']}/capture").status_code == 204
    assert api.get(f"/v1/adapters/{adapter['id']}/capture").json()["enabled"] is False
    classify(api, adapter["id"], files[:3], threshold="0.99", reject_unknown="true")
    flush(api)
    assert listed(api, adapter["id"]) == []
    assert api.delete(f"/v1/adapters/{adapter['id']}/capture").status_code == 204


@pytest.fixture
def captured(api, make_adapter, files):
    """An adapter with 8 captures (sample_rate 1): (adapter, captures newest first)."""
    adapter = make_adapter()
    capture_on(api, adapter["id"], sample_rate=1.0)
    classify(api, adapter["id"], files[:8])
    flush(api)
    kept = listed(api, adapter["id"])
    assert len(kept) == 8
    return adapter, kept


def test_review_filters_pages_and_images(api, captured, files):
    adapter, kept = captured
    ref = adapter["id"]
    pages, cursor = [], None
    while True:
        r = api.get(f"/v1/adapters/{ref}/captures", params={"limit": 3} | (
            {"cursor": cursor} if cursor else {})).json()
        pages.append([c["id"] for c in r["data"]])
        cursor = r["next_cursor"]
        if not cursor:
            break
    assert [len(p) for p in pages] == [3, 3, 2]
    assert [i for page in pages for i in page] == [c["id"] for c in kept]
    label = kept[0]["predicted"]
    assert {c["id"] for c in listed(api, ref, predicted=label)} == \
        {c["id"] for c in kept if c["predicted"] == label}
    low = sorted(c["confidence"] for c in kept)[3]
    assert {c["id"] for c in listed(api, ref, max_confidence=low)} == \
        {c["id"] for c in kept if c["confidence"] <= low}
    assert {c["id"] for c in listed(api, ref, min_confidence=low)} == \
        {c["id"] for c in kept if c["confidence"] >= low}
    assert len(listed(api, ref, rule="sample_rate")) == 8
    assert listed(api, ref, rule="unknown") == []
    assert len(listed(api, ref, state="pending")) == 8 and listed(api, ref, state="labelled") == []
    assert api.get(f"/v1/adapters/{ref}/captures", params={"state": "nope"}).status_code == 422

    one = kept[0]
    assert api.get(f"/v1/adapters/{ref}/captures/{one['id']}").json() == one
    image = api.get(f"/v1/adapters/{ref}/captures/{one['id']}/image")
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    sent = {name: data for _, (name, data, _) in files}
    assert image.content == sent[one["filename"]] and one["media_type"] == "image/png"


def test_labelling_one_capture(api, captured):
    adapter, kept = captured
    base = f"/v1/adapters/{adapter['id']}/captures"
    first, second, third = (c["id"] for c in kept[:3])
    r = api.post(f"{base}/{first}", json={"label": "green"})
    assert r.status_code == 200, r.text
    assert (r.json()["state"], r.json()["label"], r.json()["new_class"]) == \
        ("labelled", "green", False) and r.json()["labelled_at"]
    r = api.post(f"{base}/{second}", json={"label": "purple"})
    assert r.status_code == 422 and "'purple' is not a class" in r.json()["problems"][0]
    assert "new_class" in r.json()["problems"][0]
    r = api.post(f"{base}/{second}", json={"label": "purple", "new_class": True})
    assert r.status_code == 200 and (r.json()["label"], r.json()["new_class"]) == \
        ("purple", True)
    r = api.post(f"{base}/{third}", json={"discard": True})
    assert r.status_code == 200 and (r.json()["state"], r.json()["label"]) == \
        ("discarded", None)
    for bad in ({"discard": True, "label": "red"}, {}, {"label": " red", "new_class": True}):
        r = api.post(f"{base}/{third}", json=bad)
        assert r.status_code == 422, (bad, r.text)
    r = api.post(f"{base}/{third}", json={"label": "red"})  # reviewed again
    assert r.json()["state"] == "labelled"
    assert api.post(f"{base}/{uuid.uuid4().hex}", json={"label": "red"}).status_code == 404
    states = {c["id"]: c["state"] for c in listed(api, adapter["id"])}
    assert (states[first], states[second], states[third]) == ("labelled",) * 3
    assert len(listed(api, adapter["id"], state="labelled")) == 3


def test_bulk_labelling_is_all_or_nothing(api, captured):
    adapter, kept = captured
    url = f"/v1/adapters/{adapter['id']}/captures:label"
    ids = [c["id"] for c in kept]
    bad = [{"id": ids[0], "label": "red"}, {"id": ids[1], "label": "purple"},
           {"id": "0" * 32, "label": "red"}, {"id": ids[2], "discard": True},
           {"id": ids[0], "discard": True}]
    r = api.post(url, json={"items": bad})
    assert r.status_code == 422, r.text
    problems = r.json()["problems"]
    assert [p.split(":")[0] for p in problems] == ["items[1]", "items[2]", "items[4]"]
    assert "'purple'" in problems[0] and "not found" in problems[1]
    assert all(c["state"] == "pending" for c in listed(api, adapter["id"]))  # none changed

    good = [{"id": ids[0], "label": "red"}, {"id": ids[1], "label": "cyan", "new_class": True},
            {"id": ids[2], "discard": True}]
    r = api.post(url, json={"items": good})
    assert r.status_code == 200, r.text
    assert [(c["id"], c["state"], c["label"]) for c in r.json()["data"]] == [
        (ids[0], "labelled", "red"), (ids[1], "labelled", "cyan"), (ids[2], "discarded", None)]
    assert api.post(url, json={"items": []}).status_code == 422


def test_tenants_never_see_each_others_captures(api, captured, make_adapter, files):
    adapter, kept = captured
    key = new_key(api, ["admin"], tenant=f"other-{uuid.uuid4().hex[:6]}")
    other = {"Authorization": f"Bearer {key}"}
    base = f"/v1/adapters/{adapter['id']}"
    for method, path, body in [
            ("GET", f"{base}/capture", None), ("PUT", f"{base}/capture", {"sample_rate": 1}),
            ("DELETE", f"{base}/capture", None), ("GET", f"{base}/captures", None),
            ("GET", f"{base}/captures/{kept[0]['id']}", None),
            ("GET", f"{base}/captures/{kept[0]['id']}/image", None),
            ("POST", f"{base}/captures/{kept[0]['id']}", {"label": "red"}),
            ("POST", f"{base}/captures:label", {"items": [{"id": kept[0]["id"],
                                                            "label": "red"}]})]:
        r = api.request(method, path, json=body, headers=other)
        assert r.status_code == 404, (method, path, r.text)
    # their own adapter of the same name cannot reach ours either
    theirs = make_adapter(key=key)
    assert api.put(f"/v1/adapters/{theirs['id']}/capture", json={"sample_rate": 1.0},
                   headers=other).status_code == 200
    assert listed(api, theirs["id"], other) == []
    for path in (f"/v1/adapters/{theirs['id']}/captures/{kept[0]['id']}",
                 f"/v1/adapters/{theirs['id']}/captures/{kept[0]['id']}/image"):
        assert api.get(path, headers=other).status_code == 404
    r = api.post(f"/v1/adapters/{theirs['id']}/captures:label", headers=other,
                 json={"items": [{"id": kept[0]["id"], "label": "red"}]})
    assert r.status_code == 422 and "not found" in r.json()["problems"][0]
    assert all(c["state"] == "pending" for c in listed(api, adapter["id"]))


def test_scopes_and_a_deleted_adapter(api, captured, make_adapter, db_session):
    adapter, kept = captured
    base = f"/v1/adapters/{adapter['id']}"
    reader = {"Authorization": f"Bearer {new_key(api, ['read'])}"}
    classifier = {"Authorization": f"Bearer {new_key(api, ['classify'])}"}
    assert api.get(f"{base}/captures", headers=reader).status_code == 200
    assert api.get(f"{base}/capture", headers=reader).status_code == 200
    assert api.get(f"{base}/captures", headers=classifier).status_code == 403
    for method, path, body in [("PUT", f"{base}/capture", {"sample_rate": 1}),
                               ("DELETE", f"{base}/capture", None),
                               ("POST", f"{base}/captures/{kept[0]['id']}", {"label": "red"})]:
        assert api.request(method, path, json=body, headers=reader).status_code == 403

    ref = make_adapter(name=None)["id"]  # its lineage ends with it
    capture_on(api, ref, sample_rate=1.0)
    classify(api, ref, _unique_files(1))
    flush(api)
    assert len(listed(api, ref)) == 1
    assert api.delete(f"/v1/adapters/{ref}").status_code == 204
    for path in (f"/v1/adapters/{ref}/captures", f"/v1/adapters/{ref}/capture"):
        assert api.get(path).status_code == 404
    assert db_session.scalars(select(Capture).where(Capture.lineage == ref)).all() == []

