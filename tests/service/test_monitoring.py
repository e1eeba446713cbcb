"""Monitoring what is served (PostgreSQL, Redis, clipfit-tiny): counts per adapter version
after classifying, the stats API per hour and per lineage (tenants kept apart), the bounded
Prometheus series, the held-out baseline and the adapter.drift event (once per window).
Adapters are brought in by import; each test names its own."""

from __future__ import annotations

import io
import json
import uuid
import zipfile
from datetime import timedelta

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from clipfit_core import report
from clipfit_core.delta import CONFIG_NAME, WEIGHTS_NAME, Delta, DeltaConfig
from clipfit_core.params import trainable_parameters
from registry import served as served_rows
from registry.models import utcnow
from service import drift, served
from service.served import Counts, bucket_of, hour_of

from .conftest import new_key
from .test_capture import CLASSES, _middle, capture_on, classify, files, make_adapter

__all__ = ["files", "make_adapter"]  # fixtures, used by name


def ctx_of(api):
    return api.app.state.context


def stats(api, ref: str, headers=None, **params) -> dict:
    r = api.get(f"/v1/adapters/{ref}/stats", params=params, headers=headers or {})
    assert r.status_code == 200, r.text
    return r.json()


def expected(answers: list[dict]) -> dict:
    """What the answers a caller got should count as."""
    probs = [a["top_k"][0]["prob"] for a in answers]
    histogram = [0] * 10
    for p in probs:
        histogram[min(9, int(p * 10 + 1e-9))] += 1
    return {"predictions": len(answers), "unknown": sum(a["unknown"] for a in answers),
            "low_confidence": sum(p < 0.5 for p in probs), "histogram": histogram}


def test_low_confidence_is_the_reports_and_buckets_are_half_open():
    assert served.LOW_CONFIDENCE == report.LOW_CONFIDENCE
    assert [bucket_of(p) for p in (0.0, 0.05, 0.1, 0.3, 0.4999, 0.5, 0.9, 0.99, 1.0)] == \
        [0, 0, 1, 3, 4, 5, 9, 9, 9]
    counts = Counts.of([{"unknown": True, "top_k": [{"prob": 0.5}]},
                        {"unknown": False, "top_k": [{"prob": 0.49}]}], captured=1)
    assert (counts.predictions, counts.unknown, counts.low_confidence, counts.captured) == \
        (2, 1, 1, 1)


def test_classify_counts_each_adapter_with_real_unknown_and_captured_shares(
        api, make_adapter, files):
    ctx = ctx_of(api)
    first, second = make_adapter("counted"), make_adapter("counted", seed=2)
    probe = classify(api, first["id"], files)
    cut = _middle([a["top_k"][0]["prob"] for a in probe])  # about half below it
    capture_on(api, first["id"], unknown=True)
    before = sum(c.predictions for c in ctx.served.totals(limit=10**6).values())
    unknown_answers = classify(api, first["id"], files, threshold=str(cut))
    plain = classify(api, second["id"], files[:6])
    zero_shot = api.post("/v1/classify", files=files[:3], data={
        "base_model": "clipfit-tiny", "classes": ",".join(CLASSES)})
    assert zero_shot.status_code == 200, zero_shot.text
    totals = ctx.served.totals(limit=10**6)
    # zero-shot answers are not counted: only the 16 + 6 answers with adapters since
    assert sum(c.predictions for c in totals.values()) - before == 22
    ctx.served.flush()

    got = stats(api, first["id"])["versions"][0]["totals"]
    want = expected(probe + unknown_answers)
    unknown = want["unknown"]
    assert 0 < unknown < len(files)  # the threshold turned some away, not all
    assert unknown == sum(p["top_k"][0]["prob"] < cut for p in unknown_answers)
    assert {k: got[k] for k in want} == want
    assert got["captured"] == unknown  # the rule keeps the "unknown" answers, and only those
    assert got["unknown_share"] == round(unknown / 32, 4)
    assert got["captured_share"] == round(unknown / 32, 4)
    assert got["low_confidence_share"] == round(want["low_confidence"] / 32, 4)
    other = stats(api, second["id"])["versions"][0]["totals"]
    assert {k: other[k] for k in want} == expected(plain)
    assert (other["unknown"], other["captured"]) == (0, 0)
    assert totals[first["id"]].predictions == 32 and totals[second["id"]].predictions == 6


def test_the_stats_api_per_hour_per_lineage_and_never_across_tenants(api, tiny, files):
    from .test_aliases import _delta_zip

    name = f"lineage-{uuid.uuid4().hex[:8]}"
    v1, v2 = (api.post("/v1/adapters", data={"name": name}, files={
        "file": ("d.zip", _delta_zip(tiny, seed, CLASSES))}).json() for seed in (1, 2))
    assert (v1["version"], v2["version"]) == (1, 2)
    classify(api, f"{name}@1", files[:8])
    classify(api, f"{name}@2", files[:4])
    ctx = ctx_of(api)
    ctx.served.flush()
    now = utcnow()
    with ctx.transaction() as s:  # an earlier day of v1, as another replica flushed it
        served_rows.add_served(s, tenant_id=_tenant(api), adapter_id=v1["id"],
                               hour=hour_of(now) - timedelta(hours=30), predictions=5,
                               unknown=5, low_confidence=5, captured=0,
                               histogram=[5] + [0] * 9)

    one = stats(api, f"{name}@1")
    assert one["adapter_id"] == v1["id"] and one["hours"] == 24
    assert one["buckets"] == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    assert one["low_confidence_below"] == 0.5
    [version] = one["versions"]
    assert (version["adapter_id"], version["name"], version["version"]) == \
        (v1["id"], name, 1)
    assert version["baseline"] == {"unknown_share": None, "low_confidence_share": None}
    assert version["totals"]["predictions"] == 8  # the day before is outside 24 h
    hours = version["hours"]
    assert sum(h["predictions"] for h in hours) == 8 and 1 <= len(hours) <= 2  # an hour turn
    assert all(h["hour"].endswith(":00:00Z") for h in hours)
    assert {h["hour"] for h in hours} <= {
        (hour_of(now) - timedelta(hours=h)).isoformat() + "Z" for h in (0, 1)}

    longer = stats(api, v1["id"], hours=48)["versions"][0]
    assert longer["totals"]["predictions"] == 13
    assert longer["hours"][0] == {
        "hour": (hour_of(now) - timedelta(hours=30)).isoformat() + "Z", "predictions": 5,
        "unknown": 5, "low_confidence": 5, "captured": 0, "unknown_share": 1.0,
        "low_confidence_share": 1.0, "captured_share": 0.0, "histogram": [5] + [0] * 9}

    lineage = stats(api, f"{name}@2", lineage="true")
    assert [(v["version"], v["totals"]["predictions"]) for v in lineage["versions"]] == \
        [(1, 8), (2, 4)]
    assert lineage["adapter_id"] == v2["id"]

    for bad in ("0", "2161", "x"):
        assert api.get(f"/v1/adapters/{v1['id']}/stats", params={"hours": bad}
                       ).status_code == 422
    reader = {"Authorization": f"Bearer {new_key(api, ['read'])}"}
    assert stats(api, v1["id"], reader)["versions"][0]["totals"]["predictions"] == 8
    other = {"Authorization": f"Bearer {new_key(api, ['admin'], f'o-{uuid.uuid4().hex[:6]}')}"}
    for ref in (v1["id"], f"{name}@1", f"{name}@2"):
        r = api.get(f"/v1/adapters/{ref}/stats", headers=other)
        assert r.status_code == 404, r.text


def _tenant(api) -> str:
    from registry import crud

    with ctx_of(api).reading() as s:
        return crud.get_tenant_by_name(s, name="default").id


def test_metrics_label_the_top_adapters_and_sum_the_rest(api, make_adapter, files,
                                                         monkeypatch):
    for n in (7, 5, 3):  # at least three adapters served in this process
        classify(api, make_adapter("metric")["id"], files[:n])
    monkeypatch.setattr(served, "METRIC_ADAPTERS", 2)
    everything = ctx_of(api).served.totals(limit=10**6)
    r = api.get("/metrics")
    assert r.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    predictions = {s.labels["adapter"]: s.value
                   for s in families["clipfit_served_predictions"].samples
                   if s.name == "clipfit_served_predictions_total"}
    ranked = sorted(everything.items(), key=lambda kv: (-kv[1].predictions, kv[0]))
    top = {adapter: c.predictions for adapter, c in ranked[:2]}
    assert predictions == {**top, "other": sum(c.predictions for _, c in ranked[2:])}
    assert sum(predictions.values()) == sum(c.predictions for c in everything.values())
    assert all(len(label) == 32 or label == "other" for label in predictions)  # ids only
    low = {s.labels["adapter"]: s.value
           for s in families["clipfit_served_low_confidence"].samples
           if s.name == "clipfit_served_low_confidence_total"}
    buckets = {(s.labels["adapter"], s.labels["le"]): s.value
               for s in families["clipfit_served_confidence"].samples
               if s.name == "clipfit_served_confidence_bucket"}
    for adapter, n in predictions.items():
        assert buckets[(adapter, "+Inf")] == buckets[(adapter, "1.0")] == n
        assert buckets[(adapter, "0.5")] == low[adapter]  # [0, 0.5): low confidence
    assert {s.labels["adapter"] for s in families["clipfit_served_unknown"].samples} == \
        set(predictions)
    assert "clipfit_served_captured" in families and "clipfit_served_dropped" in families


def _held_out() -> tuple[torch.Tensor, torch.Tensor]:
    """Made-up held-out logits (mostly right) and labels."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(40) % 4
    return torch.randn(40, 4, generator=g) + 3 * torch.nn.functional.one_hot(labels, 4), labels


def _calibrated_zip(tiny, *, low_confidence: bool = True) -> tuple[bytes, dict]:
    """A delta whose config carries a held-out report and calibration (as training stores
    them); without ``low_confidence``, as adapters trained before that share was stored."""
    logits, labels = _held_out()
    evaluation = report.evaluation_report(logits, logits, labels, CLASSES)
    calibration = report.calibration(logits, labels)
    if not low_confidence:
        del calibration["held_out_low_confidence"]
    tensors = {n: p.detach().cpu().clone() for n, p in trainable_parameters(tiny.model).items()}
    delta = Delta(tensors, DeltaConfig(
        base_model="clipfit-tiny", base_fingerprint=tiny.fingerprint, classnames=CLASSES,
        templates=["a photo of a {}."], arch=tiny.arch, evaluation=evaluation,
        calibration=calibration))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(CONFIG_NAME, json.dumps(delta.config_dict()))
        z.writestr(WEIGHTS_NAME, delta.to_bytes())
    return buf.getvalue(), delta.config_dict()


def test_the_baseline_is_the_held_out_share_answered_unknown(tiny):
    _, config = _calibrated_zip(tiny)
    cal, accuracy = config["calibration"], config["evaluation"]["tuned"]["accuracy"]
    assert 0 < accuracy < 1 and cal["held_out_rejected_wrong"] is not None
    base = drift.baseline(config)
    assert base["unknown_share"] == round(accuracy * cal["held_out_rejected_right"]
                                          + (1 - accuracy) * cal["held_out_rejected_wrong"], 4)
    assert base["low_confidence_share"] == cal["held_out_low_confidence"]
    # recomputed from the logits: the share of held-out images classify would reject
    logits, _ = _held_out()
    top = (logits / cal["temperature"]).softmax(-1).max(-1).values
    assert abs(base["unknown_share"] - (top < cal["threshold"]).float().mean().item()) < 1e-3
    # every answer right: no wrong answers to weigh; no threshold or report: not known
    assert drift.baseline({"calibration": {**cal, "held_out_rejected_wrong": None},
                           "evaluation": {"tuned": {"accuracy": 1.0}}})["unknown_share"] == \
        cal["held_out_rejected_right"]
    assert drift.baseline({"calibration": {**cal, "threshold": None},
                           "evaluation": config["evaluation"]})["unknown_share"] is None
    assert drift.baseline({}) == {"unknown_share": None, "low_confidence_share": None}
    assert drift.baseline({"calibration": "odd", "evaluation": {"tuned": [1]}}) == \
        {"unknown_share": None, "low_confidence_share": None}


@pytest.fixture
def drift_endpoint(api):
    r = api.post("/v1/webhooks", json={"url": "https://example.com/clipfit-drift",
                                       "events": ["adapter.drift"]})
    assert r.status_code == 201, r.text
    yield r.json()["id"]
    api.delete(f"/v1/webhooks/{r.json()['id']}")


def test_drift_fires_once_per_window_when_unknown_passes_the_factor(
        api, tiny, files, drift_endpoint, service_settings):
    ctx = ctx_of(api)
    data, config = _calibrated_zip(tiny, low_confidence=False)  # judged on "unknown" only
    name = f"drifting-{uuid.uuid4().hex[:8]}"
    r = api.post("/v1/adapters", data={"name": name}, files={"file": ("d.zip", data)})
    assert r.status_code == 201, r.text
    adapter, base = r.json(), drift.baseline(config)
    assert base["unknown_share"] is not None and 3 * max(base["unknown_share"], 0.01) < 0.5
    assert base["low_confidence_share"] is None
    # fewer answers than the service's own check asks for (100), so only this test's fires
    settings = service_settings.model_copy(update={"drift_min_predictions": 8,
                                                   "drift_window_minutes": 60})
    window = timedelta(minutes=60)
    t0 = utcnow()

    def check(now) -> list[dict]:
        with ctx.transaction() as s:
            return [e for e in drift.check(s, settings, now=now)
                    if e["adapter_id"] == adapter["id"]]

    def deliveries() -> list[dict]:
        r = api.get(f"/v1/webhooks/{drift_endpoint}/deliveries")
        return [d for d in r.json()["data"]
                if d["payload"]["data"]["adapter_id"] == adapter["id"]]

    assert classify(api, adapter["id"], files[:7])  # too few answers to judge
    ctx.served.flush()
    assert check(t0) == []
    assert not any(a["unknown"] for a in classify(api, adapter["id"], files[7:8]))
    ctx.served.flush()
    assert check(t0) == [] and deliveries() == []  # 8 answers, none "unknown": no drift
    # every answer turned away as "unknown": far above 3x the held-out share
    answers = classify(api, adapter["id"], files, threshold="1.0")
    assert all(a["unknown"] for a in answers)
    ctx.served.flush()
    [event] = check(t0)
    assert event["observed"]["unknown_share"] == round(len(files) / (8 + len(files)), 4)
    assert event["exceeded"] == ["unknown_share"]
    assert (event["name"], event["version"], event["factor"]) == (name, 1, 3.0)
    assert event["baseline"] == base and event["predictions"] == 8 + len(files)
    assert event["window"]["minutes"] == 60
    [sent] = deliveries()
    assert sent["event_type"] == "adapter.drift" and sent["status"] == "pending"
    assert sent["payload"]["type"] == "adapter.drift" and sent["payload"]["data"] == event
    # not again within the window, however often the check runs
    for later in (timedelta(0), timedelta(minutes=1), window - timedelta(seconds=1)):
        assert check(t0 + later) == []
    assert len(deliveries()) == 1
    # a window later, still drifting: a new event
    assert len(check(t0 + window)) == 1 and len(deliveries()) == 2
