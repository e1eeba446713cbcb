"""Exports (delta, merged open_clip) and imports of adapters through the service
(PostgreSQL + a real Celery worker, clipfit-tiny)."""

from __future__ import annotations

import io
import json
import zipfile

import open_clip
import pytest
import torch
import torch.nn.functional as F

from clipfit_core.data import open_image
from registry.models import Adapter

from .conftest import FINISHED, Worker, image_files, new_key, wait_for
from .test_jobs import count


@pytest.fixture(scope="module")
def trained(api, start_worker, colour_set):
    start_worker()
    files, labels = image_files(colour_set)
    r = api.post("/v1/jobs", files=files, data={
        "labels": labels, "base_model": "clipfit-tiny", "epochs": "10", "lr": "0.1",
        "batch_size": "16", "val_fraction": "0.25", "seed": "2", "name": "to export"})
    job = wait_for(api, r.json()["id"], lambda j: j["status"] in FINISHED)
    assert job["status"] == "succeeded", job
    return api.get(f"/v1/adapters/{job['adapter_id']}").json()


@pytest.fixture(scope="module")
def start_worker(service_env, tmp_path_factory):  # one worker for the module's job
    workers = []

    def start(**extra_env):
        worker = Worker(service_env, tmp_path_factory.mktemp("w") / "worker.log", **extra_env)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()


def _unzip(content: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(content)) as z:
        return {name: z.read(name) for name in z.namelist()}


def test_the_merged_open_clip_export_answers_like_the_service(api, trained, colour_set,
                                                              tmp_path):
    r = api.get(f"/v1/adapters/{trained['id']}/download", params={"format": "open_clip"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    files = _unzip(r.content)
    assert sorted(files) == ["clipfit_classes.json", "open_clip_config.json",
                             "open_clip_model.safetensors"]
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    info = json.loads(files["clipfit_classes.json"])
    assert info["classnames"] == trained["classnames"] and info["arch"] == "clipfit-tiny"

    model, _, preprocess = open_clip.create_model_and_transforms(
        info["arch"], pretrained=str(tmp_path / "open_clip_model.safetensors"))
    model.eval().requires_grad_(False)
    tokenizer = open_clip.get_tokenizer(info["arch"])
    paths = [colour_set / c / "0005.png" for c in ("red", "green", "blue", "yellow")]
    with torch.no_grad():
        text = F.normalize(model.encode_text(tokenizer(
            [info["templates"][0].format(c) for c in info["classnames"]])), dim=-1)
        image = F.normalize(model.encode_image(torch.stack(
            [preprocess(open_image(p)) for p in paths])), dim=-1)
        probs = (model.logit_scale.exp() * image @ text.T).softmax(-1)

    answer = api.post("/v1/classify", data={"adapter_id": trained["id"], "top_k": "4",
                                            "calibrated": "false"},
                      files=[("images", (p.name, p.read_bytes(), "image/png")) for p in paths])
    assert answer.status_code == 200, answer.text
    for row, prediction in zip(probs, answer.json()["predictions"]):
        for label in prediction["top_k"]:
            mine = row[info["classnames"].index(label["label"])].item()
            assert abs(mine - label["prob"]) < 2e-6  # the service rounds to 6 decimals


def test_a_downloaded_delta_imports_as_an_equal_adapter(api, trained, colour_set):
    delta_zip = api.get(f"/v1/adapters/{trained['id']}/download").content
    r = api.post("/v1/adapters", files={"file": ("d.zip", delta_zip, "application/zip")},
                 data={"name": "moved here"})
    assert r.status_code == 201, r.text
    imported = r.json()
    assert imported["id"] != trained["id"] and imported["job_id"] is None
    assert imported["name"] == "moved here"
    # the same tensors (the file is written anew: its header's key order may differ)
    from safetensors.torch import load
    tensors = [load(_unzip(api.get(f"/v1/adapters/{a}/download").content)[
        "adapter_model.safetensors"]) for a in (trained["id"], imported["id"])]
    assert tensors[0].keys() == tensors[1].keys()
    assert all(torch.equal(tensors[0][k], tensors[1][k]) for k in tensors[0])
    assert imported["classnames"] == trained["classnames"]
    report = api.get(f"/v1/adapters/{imported['id']}/evaluation").json()
    assert report["evaluation"] == api.get(
        f"/v1/adapters/{trained['id']}/evaluation").json()["evaluation"]
    files, _ = image_files(colour_set)
    answers = [api.post("/v1/classify", data={"adapter_id": a, "top_k": "2"},
                        files=files[:8]).json()["predictions"]
               for a in (trained["id"], imported["id"])]
    assert answers[0] == answers[1]


def test_imports_are_checked_before_anything_is_stored(api, trained):
    parts = _unzip(api.get(f"/v1/adapters/{trained['id']}/download").content)
    config = json.loads(parts["adapter_config.json"])
    before = count(api, Adapter)

    def attempt(**changes):
        files = dict(parts)
        if "config" in changes:
            files["adapter_config.json"] = json.dumps(config | changes["config"]).encode()
        if "weights" in changes:
            files["adapter_model.safetensors"] = changes["weights"]
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            for name, data in files.items():
                z.writestr(name, data)
        return api.post("/v1/adapters", files={"file": ("d.zip", buf.getvalue())})

    cases = [
        ({"config": {"base_fingerprint": "0" * 64}}, "fingerprint"),
        ({"config": {"base_model": "ViT-B-16:openai"}}, "is not allowed here"),
        ({"config": {"classnames": ["a", "a", ""]}}, "class"),
        ({"config": {"templates": ["no placeholder"]}}, "template"),
        ({"config": {"calibration": {"temperature": 0, "threshold": 2}}}, "temperature"),
        ({"config": {"evaluation": {"classnames": ["x"]}}}, "evaluation"),
        ({"config": {"method": "lora"}}, "method must be 'clipfit'"),
        ({"weights": b"not safetensors"}, "cannot be read"),
    ]
    deep: dict = {}
    for _ in range(300):
        deep = {"x": [deep]}
    cases += [
        ({"config": {"metrics": deep}}, "nests deeper than 8 levels"),
        ({"config": {"metrics": {"a": {"b": {"c": {"d": 1}}}}}}, "at most 3 levels"),
        ({"config": {"classnames": []}}, "at least 2"),
        ({"config": {"templates": ["a {}"] + [f"photo {i} of {{}}" for i in range(150)]}},
         "the limit is 100"),
        ({"config": {"base_fingerprint": 12345}}, "64 hexadecimal digits"),
        ({"config": {"format_version": "zzz"}}, "format_version"),
        ({"config": {"calibration": {"temperature": 10 ** 400, "threshold": 0.5}}},
         "temperature"),
    ]
    # a delta of another shape: clipfit-tiny's tensors, one dropped
    from safetensors.torch import load, save
    tensors = load(parts["adapter_model.safetensors"])
    tensors.pop(min(tensors))
    cases.append(({"weights": save(tensors)}, "missing"))
    for changes, words in cases:
        r = attempt(**changes)
        assert r.status_code == 422 and words in r.text, (changes, r.text)
    r = api.post("/v1/adapters", files={"file": ("d.zip", b"PK\x03\x04 broken")})
    assert r.status_code == 422 and "not a zip" in r.text
    nan = parts["adapter_config.json"].replace(b'"method"', b'"x": NaN, "method"')
    r = attempt(config={})  # the untouched config imports...
    assert r.status_code == 201
    assert api.delete(f"/v1/adapters/{r.json()['id']}").status_code == 204
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:  # ...but not with NaN in it, nor with 11 entries
        z.writestr("adapter_config.json", nan)
        z.writestr("adapter_model.safetensors", parts["adapter_model.safetensors"])
    r = api.post("/v1/adapters", files={"file": ("d.zip", buf.getvalue())})
    assert r.status_code == 422 and "'x' is not a finite number" in r.text
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in parts.items():
            z.writestr(name, data)
        for i in range(9):
            z.writestr(f".hidden{i}", b"")
    r = api.post("/v1/adapters", files={"file": ("d.zip", buf.getvalue())})
    assert r.status_code == 422 and "11 entries" in r.text
    assert count(api, Adapter) == before  # nothing was stored

    reader = new_key(api, ["read"])
    r = api.post("/v1/adapters", headers={"Authorization": f"Bearer {reader}"},
                 files={"file": ("d.zip", b"x")})
    assert r.status_code == 403  # importing needs the train scope
    other = new_key(api, ["read"], tenant="someone-else")
    r = api.get(f"/v1/adapters/{trained['id']}/download", params={"format": "open_clip"},
                headers={"Authorization": f"Bearer {other}"})
    assert r.status_code == 404


def test_export_formats_are_checked(api, trained):
    r = api.get(f"/v1/adapters/{trained['id']}/download", params={"format": "onnx"})
    assert r.status_code == 422 and "format" in r.text


def test_a_warm_start_from_a_stored_adapter(api, trained, colour_set):
    files, labels = image_files(colour_set)
    r = api.post("/v1/jobs", files=files, data={
        "labels": labels, "epochs": "1", "val_fraction": "0.25", "seed": "2",
        "parent_adapter_id": trained["id"]})  # base_model from the parent
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["parent_adapter_id"] == trained["id"] and job["auto"] is None
    assert "parent_adapter_id" not in job["hyperparameters"]
    assert job["base_model"] == trained["base_model"]
    job = wait_for(api, job["id"], lambda j: j["status"] in FINISHED)
    assert job["status"] == "succeeded", job
    child = api.get(f"/v1/adapters/{job['adapter_id']}").json()
    assert child["hyperparameters"]["parent_adapter_id"] == trained["id"]
    # one warm-up epoch from the parent's values: already as good as the parent
    assert child["metrics"]["val_accuracy"] >= trained["metrics"]["val_accuracy"] - 0.1
    assert child["metrics"]["val_accuracy"] > child["metrics"]["zero_shot_val_accuracy"]

    for reference, words in [("nope", "no such adapter"), ("to export@9", "no such adapter")]:
        r = api.post("/v1/jobs", files=files, data={"labels": labels,
                                                    "parent_adapter_id": reference})
        assert r.status_code == 422 and words in r.text, r.text
    r = api.post("/v1/jobs", files=files, data={  # by name and version, base given
        "labels": labels, "epochs": "1", "base_model": "clipfit-tiny",
        "parent_adapter_id": f"to export@{trained['version']}"})
    assert r.status_code == 202 and \
        r.json()["parent_adapter_id"] == trained["id"]
