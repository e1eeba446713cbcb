"""Retrain through ``clipfit.client`` and ``clipfit remote``, against a real ``clipfit serve``
(SQLite, its in-process worker trains clipfit-tiny): a named version, captures labelled,
then the next version trained on its dataset plus the captures."""

from __future__ import annotations

import hashlib
import json

import pytest

from clipfit.cli import main as clipfit_main
from clipfit.client import ApiError, Client
from tests.client.test_webhooks import until

CLASSES = ["red", "green", "blue", "yellow"]
TRAIN = {"base_model": "clipfit-tiny", "epochs": 2, "lr": 0.1, "batch_size": 16,
         "val_fraction": 0.25, "seed": 1}


@pytest.fixture(scope="module")
def seen(colour_test):
    """Images the adapters never trained on: two of each class, distinct bytes."""
    return [p for c in CLASSES for p in sorted((colour_test / c).iterdir())[:2]]


def trained(cf: Client, name: str, colour_train) -> str:
    """``name@1``, trained by the server's worker, with capture on (sample_rate 1)."""
    job = cf.jobs.wait(cf.jobs.create(colour_train, name=name, **TRAIN).id, timeout=300)
    assert job.status == "succeeded", job.error
    cf.adapters.set_capture(f"{name}@1", sample_rate=1.0)
    return f"{name}@1"


def labelled(cf: Client, ref: str, images) -> list[str]:
    """Classify ``images`` through ``ref`` and label each capture with its folder's class,
    one at a time in the order sent (the fifth is set aside by the retrain)."""
    cf.classify(images, adapter=ref)
    kept = until(lambda: len(found := list(cf.adapters.captures(ref))) == len(images)
                 and found)
    by_digest = {c.raw["sha256"]: c for c in kept}
    ids = []
    for path in images:
        capture = by_digest[hashlib.sha256(path.read_bytes()).hexdigest()]
        cf.adapters.label_capture(ref, capture.id, path.parent.name)
        ids.append(capture.id)
    return ids


def test_client_retrain(url, key, colour_train, seen):
    with Client(url, key) as cf:
        ref = trained(cf, "client-retrain", colour_train)
        with pytest.raises(ApiError) as e:
            cf.adapters.retrain(ref)
        assert e.value.status == 409 and "no new labelled captures" in e.value.message
        ids = labelled(cf, ref, seen[:6])
        with pytest.raises(ApiError) as e:
            cf.adapters.retrain(ref, alias="Prod", epochs=0, lambda_=-1)
        assert e.value.status == 422
        problems = " | ".join(e.value.problems)
        for name in ("alias: 'Prod' is not an alias", "epochs must be >= 1",
                     "lambda must be >= 0"):
            assert name in problems, (name, problems)

        job = cf.adapters.retrain(ref, promote="auto", alias="production", epochs=1)
        assert job.status == "queued" and job.name == "client-retrain"
        assert job.hyperparameters["epochs"] == 1
        assert (job.retrain["added"], job.retrain["benchmarked"], job.retrain["promote"],
                job.retrain["alias"]) == (5, 1, "auto", "production")
        assert job.retrain["benchmark_images"] == job.retrain["held_out"] + 1
        version = cf.datasets.get(job.dataset_id)
        assert version["version"] == 2 and version["images"] == 64 + 5
        assert cf.adapters.capture(ref, ids[4]).benchmark is True
        assert cf.adapters.capture(ref, ids[0]).dataset_id == job.dataset_id

        job = cf.jobs.wait(job.id, timeout=300)
        assert job.status == "succeeded", job.error
        v2 = cf.adapters.get(job.adapter_id)
        assert (v2.version, v2.dataset_id, v2.benchmark_images) == \
            (2, job.dataset_id, job.retrain["benchmark_images"])
        assert v2.metrics["benchmark_excluded"] == job.retrain["held_out"]


def test_remote_retrain(url, key, colour_train, seen, capsys):
    def remote(*args: str) -> tuple[int, str, str]:
        code = clipfit_main(["remote", "--url", url, "--api-key", key, *args])
        out, err = capsys.readouterr()
        return code, out, err

    with Client(url, key) as cf:
        ref = trained(cf, "cli-retrain", colour_train)
    code, out, err = remote("capture", "set", ref, "--sample-rate", "1", "--retrain-after",
                            "50", "--promote", "auto")
    assert code == 0, err
    assert out.strip().endswith("retrain after 50 labels (promote auto)")
    code, _, err = remote("adapters", "retrain", ref)
    assert code == 1 and "409" in err and "no new labelled captures" in err
    with Client(url, key) as cf:
        labelled(cf, ref, seen[:3])
    code, out, err = remote("adapters", "retrain", ref, "--promote", "auto", "--alias",
                            "production", "--epochs", "1", "--wait")
    assert code == 0, err
    assert "succeeded" in out and "retrain of cli-retrain" in out and "(+3 captures)" in out
    assert "promote auto to @production" in out
    code, out, err = remote("--json", "adapters", "show", "cli-retrain@2")
    assert code == 0, err
    shown = json.loads(out)
    assert shown["version"] == 2 and shown["benchmark_images"] >= 1
    code, out, _ = remote("datasets", "show", shown["dataset_id"])
    assert code == 0 and f"{shown['dataset_id']} (version 2, from " in out
    assert f"{64 + 3} images" in out
    with pytest.raises(SystemExit) as e:
        remote("adapters", "retrain", "cli-retrain@2", "--promote", "sometimes")
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err
