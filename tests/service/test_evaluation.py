"""The evaluation report and the "unknown" answer through the service (PostgreSQL + a real
Celery worker): an adapter trained on three colours meets images of five colours it never
saw (held-out classes of the same synthetic set)."""

from __future__ import annotations

import pytest

from clipfit_core.synthetic import write_dataset

from .conftest import FINISHED, image_files, wait_for

KNOWN = ["red", "green", "blue"]
NOVEL = ["yellow", "purple", "cyan", "pink", "orange"]


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("openset")
    return (write_dataset(root / "train", KNOWN, per_class=16, seed=0),
            write_dataset(root / "known", KNOWN, per_class=20, seed=5),
            write_dataset(root / "novel", NOVEL, per_class=12, seed=6))


def _classify(api, folder, **fields):
    files, _ = image_files(folder)
    r = api.post("/v1/classify", files=files, data={k: str(v) for k, v in fields.items()})
    assert r.status_code == 200, r.text
    return r.json()


def test_evaluation_report_calibration_and_unknown(api, start_worker, sets):
    train, known, novel = sets
    start_worker()
    files, labels = image_files(train)
    r = api.post("/v1/jobs", files=files, data={
        "labels": labels, "base_model": "clipfit-tiny", "epochs": "40", "lr": "0.1",
        "batch_size": "16", "val_fraction": "0.25", "seed": "1"})
    assert r.status_code == 202, r.text
    job = wait_for(api, r.json()["id"], lambda j: j["status"] in FINISHED)
    assert job["status"] == "succeeded", job
    adapter_id = job["adapter_id"]

    report = api.get(f"/v1/adapters/{adapter_id}/evaluation").json()
    evaluation, cal = report["evaluation"], report["calibration"]
    assert evaluation["classnames"] == sorted(KNOWN) and evaluation["images"] == 12
    metrics = api.get(f"/v1/adapters/{adapter_id}").json()["metrics"]
    assert evaluation["tuned"]["accuracy"] == round(metrics["val_accuracy"], 4)
    assert evaluation["zero_shot"]["accuracy"] == round(metrics["zero_shot_val_accuracy"], 4)
    assert [c["images"] for c in evaluation["tuned"]["per_class"]] == [4, 4, 4]
    assert len(evaluation["tuned"]["confusion_matrix"]) == 3
    assert cal["ece_after"] <= cal["ece_before"] and 0 < cal["threshold"] < 1

    plain = _classify(api, known, adapter_id=adapter_id, top_k=3)
    assert plain["calibrated"] is True and plain["threshold"] is None
    assert not any(p["unknown"] for p in plain["predictions"])
    raw = _classify(api, known, adapter_id=adapter_id, top_k=3, calibrated="false")
    assert raw["calibrated"] is False
    for a, b in zip(plain["predictions"], raw["predictions"]):  # the same ranking
        assert [x["label"] for x in a["top_k"]] == [x["label"] for x in b["top_k"]]

    on_known = _classify(api, known, adapter_id=adapter_id, reject_unknown="true")
    on_novel = _classify(api, novel, adapter_id=adapter_id, reject_unknown="true")
    assert on_novel["threshold"] == cal["threshold"]
    rate = {name: sum(p["label"] == "unknown" for p in answer["predictions"])
            / len(answer["predictions"]) for name, answer in (("known", on_known),
                                                                ("novel", on_novel))}
    # measured: 5% of the known colours, 55% of the five new ones are answered "unknown"
    assert rate["known"] <= 0.2 and rate["novel"] >= 0.4, rate
    assert all(p["unknown"] == (p["label"] == "unknown") for p in on_novel["predictions"])

    everything = _classify(api, novel, adapter_id=adapter_id, threshold="1")
    assert all(p["label"] == "unknown" for p in everything["predictions"])

    # the rules: the adapter's threshold is for its own classes and calibrated probabilities
    files, _ = image_files(known)
    for fields, words in [({"classes": "red,green"}, "with others give a threshold"),
                          ({"template": "a blurry photo of {}."}, "with others give a threshold"),
                          ({"calibrated": "false"}, "leave calibrated on"),
                          ({}, None)]:
        r = api.post("/v1/classify", files=files[:1], data={
            "adapter_id": adapter_id, "reject_unknown": "true", **fields})
        if words is None:
            assert r.status_code == 200
        else:
            assert r.status_code == 422 and words in r.text, r.text
    r = api.post("/v1/classify", files=files[:1], data={
        "base_model": "clipfit-tiny", "classes": "red,green", "reject_unknown": "true"})
    assert r.status_code == 422 and "for zero-shot give a threshold" in r.text


def test_no_report_without_a_held_out_split(api, start_worker, sets):
    train, _, _ = sets
    start_worker()
    files, labels = image_files(train)
    r = api.post("/v1/jobs", files=files, data={
        "labels": labels, "base_model": "clipfit-tiny", "epochs": "2", "val_fraction": "0"})
    job = wait_for(api, r.json()["id"], lambda j: j["status"] in FINISHED)
    assert job["status"] == "succeeded", job
    r = api.get(f"/v1/adapters/{job['adapter_id']}/evaluation")
    assert r.status_code == 404 and "val_fraction 0" in r.text
    files, _ = image_files(train)
    r = api.post("/v1/classify", files=files[:1], data={
        "adapter_id": job["adapter_id"], "reject_unknown": "true"})
    assert r.status_code == 422 and "no rejection threshold" in r.text
