"""Batch predictions end to end: API in this process, PostgreSQL, Redis, real Celery worker
processes, clipfit-tiny. Adapters are imported random deltas (no training runs)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import time
import zipfile

import pytest
from sqlalchemy import func, select

from registry.models import Blob, Job, Prediction, PredictionChunk, PredictionImage

from .conftest import FINISHED, new_key, wait_for
from .test_aliases import _delta_zip

COLOURS = ("blue", "green", "red", "yellow")


def count(api, model) -> int:
    with api.app.state.context.sessions() as s:
        return s.scalar(select(func.count()).select_from(model))


def stored_counts(api) -> dict[str, int]:
    return {m.__name__: count(api, m) for m in (Job, Prediction, PredictionImage, Blob)}


def wait_prediction(api, prediction_id: str, predicate, timeout: float = 120.0) -> dict:
    return wait_for(api, prediction_id, predicate, timeout, path="/v1/predictions")


def zip_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


def pngs(colour_set, per_class: int = 3) -> dict[str, bytes]:
    """'colour/NNNN.png' -> bytes, ``per_class`` of each colour."""
    return {f"{c}/{p.name}": p.read_bytes()
            for c in COLOURS for p in sorted((colour_set / c).iterdir())[:per_class]}


@pytest.fixture(scope="module")
def adapter(api, tiny) -> dict:
    r = api.post("/v1/adapters", data={"name": "batch-colours"}, files={
        "file": ("d.zip", _delta_zip(tiny, 7, list(COLOURS)), "application/zip")})
    assert r.status_code == 201, r.text
    return r.json()


def classify(api, images: list[bytes], **options) -> list[dict]:
    r = api.post("/v1/classify", data={k: str(v) for k, v in options.items()},
                 files=[("images", (f"{i}.png", b, "image/png")) for i, b in enumerate(images)])
    assert r.status_code == 200, r.text
    return r.json()["predictions"]


def results(api, prediction_id: str) -> tuple[list[dict], list[dict]]:
    r = api.get(f"/v1/predictions/{prediction_id}/results", params={"format": "jsonl"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in r.text.splitlines()]
    r = api.get(f"/v1/predictions/{prediction_id}/results", params={"format": "csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    return lines, list(csv.DictReader(io.StringIO(r.text)))


def assert_same_answers(rows: list[dict], answers: list[dict]) -> None:
    """A batch prediction's rows answer as /v1/classify does (batches of other sizes:
    probabilities equal within float rounding)."""
    assert len(rows) == len(answers)
    for row, answer in zip(rows, answers, strict=True):
        assert row["error"] is None and row["label"] == answer["label"]
        assert row["unknown"] == answer["unknown"]
        assert [t["label"] for t in row["top_k"]] == [t["label"] for t in answer["top_k"]]
        for got, want in zip(row["top_k"], answer["top_k"], strict=True):
            assert abs(got["prob"] - want["prob"]) < 1e-4


def test_zip_dataset_and_stored_images_answer_as_classify(api, start_worker, adapter,
                                                           colour_set, monkeypatch):
    monkeypatch.setattr(api.app.state.context.settings, "predict_chunk_size", 4)
    start_worker(CLIPFIT_PREDICT_BATCH_SIZE="3")
    files = pngs(colour_set)
    # a zip (images in folders) with the adapter by name@VERSION, top 2
    r = api.post("/v1/predictions", data={"adapter": "batch-colours@1", "top_k": "2"},
                 files={"dataset": ("photos.zip", zip_of(files), "application/zip")})
    assert r.status_code == 202, r.text
    by_zip = r.json()
    assert by_zip["status"] == "queued" and by_zip["source"] == "zip"
    assert by_zip["counts"]["images"] == 12 and by_zip["adapter_id"] == adapter["id"]
    assert by_zip["links"]["events"] == f"/v1/predictions/{by_zip['id']}/events"
    # a stored dataset, zero-shot
    r = api.post("/v1/datasets", files={"dataset": ("d.zip", zip_of(files), "application/zip")})
    assert r.status_code == 201, r.text
    dataset = r.json()
    r = api.post("/v1/predictions", json={"dataset_id": dataset["id"],
                                          "classes": ["red", "blue", "cyan"]})
    assert r.status_code == 202, r.text
    by_dataset = r.json()
    assert by_dataset["adapter_id"] is None and by_dataset["base_model"] == "clipfit-tiny"
    # stored images by sha256 (with an image twice), the adapter by id
    chosen = [files["red/0000.png"], files["yellow/0001.png"], files["red/0000.png"]]
    digests = [hashlib.sha256(b).hexdigest() for b in chosen]
    r = api.post("/v1/predictions", json={"images": digests, "adapter_id": adapter["id"]})
    assert r.status_code == 202, r.text
    by_images = r.json()

    for p in (by_zip, by_dataset, by_images):
        done = wait_prediction(api, p["id"], lambda b: b["status"] in FINISHED)
        assert done["status"] == "succeeded", done
        assert done["counts"]["classified"] == done["counts"]["images"] == \
            done["counts"]["done"]
        assert set(done["links"]) >= {"results_jsonl", "results_csv"}

    rows, table = results(api, by_zip["id"])
    assert [r["name"] for r in rows] == sorted(files)  # in order, folders kept in the name
    assert_same_answers(rows, classify(api, [files[n] for n in sorted(files)],
                                       adapter_id=adapter["id"], top_k=2))
    assert [t["name"] for t in table] == sorted(files)
    assert list(table[0]) == ["name", "sha256", "label", "unknown", "error", "label_1",
                              "prob_1", "label_2", "prob_2"]
    for row, line in zip(table, rows, strict=True):
        assert row["label"] == line["label"] and row["label_2"] == line["top_k"][1]["label"]
        assert float(row["prob_1"]) == line["top_k"][0]["prob"]
        assert row["sha256"] == hashlib.sha256(files[row["name"]]).hexdigest()

    rows, _ = results(api, by_dataset["id"])
    assert len(rows) == 12
    zero_shot = classify(api, [files[n] for n in sorted(files)], base_model="clipfit-tiny",
                         classes="red,blue,cyan")
    assert_same_answers(rows, zero_shot)

    rows, _ = results(api, by_images["id"])
    assert [r["name"] for r in rows] == digests
    assert_same_answers(rows, classify(api, chosen, adapter_id=adapter["id"]))

    # chunks of 4: 3 progress events, in order; the inputs are dropped once it is done
    events = api.get(f"/v1/predictions/{by_zip['id']}/events").json()["data"]
    kinds = [e["kind"] for e in events]
    assert kinds[:2] == ["queued", "running"] and kinds[-1] == "succeeded"
    progress = [e["payload"] for e in events if e["kind"] == "progress"]
    assert [p["chunk"] for p in progress] == [0, 1, 2]
    assert [p["images_done"] for p in progress] == [4, 8, 12]
    with api.app.state.context.sessions() as s:
        for p in (by_zip, by_dataset, by_images):
            assert s.scalar(select(func.count()).select_from(PredictionImage)
                            .where(PredictionImage.job_id == p["id"])) == 0
            assert s.scalar(select(func.count()).select_from(PredictionChunk)
                            .where(PredictionChunk.job_id == p["id"])) == 0

    # listed on their own page, never among the training jobs
    listed = [p["id"] for p in api.get("/v1/predictions", params={"limit": 200}).json()["data"]]
    assert listed.index(by_images["id"]) < listed.index(by_zip["id"])  # newest first
    assert api.get("/v1/predictions", params={"limit": 1}).json()["next_cursor"]
    jobs = {j["id"] for j in api.get("/v1/jobs", params={"limit": 200}).json()["data"]}
    assert by_zip["id"] not in jobs
    assert api.get(f"/v1/jobs/{by_zip['id']}").status_code == 404

    # live events as Server-Sent Events: the stream ends after the final event
    with api.stream("GET", f"/v1/predictions/{by_zip['id']}/events?stream=true") as stream:
        text = "".join(stream.iter_text())
    assert "event: queued" in text and "event: progress" in text
    assert text.rsplit("event: ", 1)[1].startswith("succeeded")


def test_bad_requests_are_refused_and_store_nothing(api, adapter, colour_set):
    files = pngs(colour_set, per_class=1)
    # unknown adapter, another tenant's dataset: 404 (they look the same)
    r = api.post("/v1/predictions", data={"adapter": "nope@1"},
                 files={"dataset": ("p.zip", zip_of(files), "application/zip")})
    assert r.status_code == 404 and r.json()["code"] == "not_found"
    other = {"Authorization": f"Bearer {new_key(api, ['admin'], tenant='predict-other')}"}
    r = api.post("/v1/datasets", headers=other,
                 files={"dataset": ("d.zip", zip_of(files), "application/zip")})
    theirs = r.json()["id"]
    before = stored_counts(api)
    r = api.post("/v1/predictions", json={"dataset_id": theirs, "adapter": adapter["id"]})
    assert r.status_code == 404
    unknown = api.post("/v1/predictions", json={"dataset_id": "0" * 32,
                                                "adapter": adapter["id"]})
    assert unknown.status_code == 404
    assert r.json()["message"].replace(theirs, "X") == \
        unknown.json()["message"].replace("0" * 32, "X")
    # another tenant's adapter
    r = api.post("/v1/predictions", headers=other, json={"images": ["a" * 64],
                                                         "adapter": adapter["id"]})
    assert r.status_code == 404
    assert stored_counts(api) == before
    # a zip without images, and everything else wrong at once: one 422 naming each problem
    r = api.post("/v1/predictions", data={"top_k": "3"},
                 files={"dataset": ("p.zip", zip_of({"notes.txt": b"hi"}), "application/zip")})
    assert r.status_code == 422
    problems = r.json()["problems"]
    assert any("give an adapter, or classes" in p for p in problems)
    assert any("holds no images" in p for p in problems)
    r = api.post("/v1/predictions", data={"adapter": adapter["id"]},
                 files={"dataset": ("p.zip", zip_of({"a.png": b"not a png"}),
                                    "application/zip")})
    assert r.status_code == 422 and any("a.png" in p for p in r.json()["problems"])
    r = api.post("/v1/predictions", json={"adapter": adapter["id"]})
    assert r.status_code == 422 and "send exactly one of" in r.json()["problems"][0]
    # another tenant's image looks exactly like an unknown one
    assert api.post("/v1/datasets", files={"dataset": ("d.zip", zip_of(files),
                                                       "application/zip")}).status_code == 201
    mine = hashlib.sha256(files["red/0000.png"]).hexdigest()
    unique = b"\x89PNG only the other tenant has this" + b"\0" * 8
    r = api.post("/v1/datasets", headers=other, files={"dataset": ("d.zip", zip_of({
        "a/x.png": files["red/0000.png"], "b/y.png": files["blue/0000.png"]}),
        "application/zip")})
    assert r.status_code == 201, r.text
    with api.app.state.context.sessions() as s:  # a blob only the other tenant names
        from registry.blobs import put_blob
        from registry.models import Dataset, DatasetImage

        ds = s.get(Dataset, r.json()["id"])
        s.add(DatasetImage(dataset_id=ds.id, position=9, label=0, filename="z.png",
                           blob_sha256=put_blob(s, data=unique)))
        s.commit()
    before = stored_counts(api)
    theirs_only = hashlib.sha256(unique).hexdigest()
    r = api.post("/v1/predictions", json={"adapter": adapter["id"],
                                          "images": [mine, theirs_only, "f" * 64, "XYZ"]})
    assert r.status_code == 422
    problems = r.json()["problems"]
    assert problems == ["images[3]: not a sha256 (64 lowercase hex digits)"]
    r = api.post("/v1/predictions", json={"adapter": adapter["id"],
                                          "images": [mine, theirs_only, "f" * 64]})
    problems = r.json()["problems"]
    assert len(problems) == 2 and problems[0].replace(theirs_only[:12], "X") == \
        problems[1].replace("f" * 12, "X").replace("[2]", "[1]")
    assert stored_counts(api) == before
    # no key with classify: 403
    reader = {"Authorization": f"Bearer {new_key(api, ['read'])}"}
    assert api.post("/v1/predictions", headers=reader, json={"images": [mine],
                                                             "adapter": adapter["id"]}
                    ).status_code == 403


def test_cancel_idempotency_and_tenants(api, adapter, colour_set):
    """Without a worker the predictions stay queued: a cancel ends one at once."""
    body = {"images": [hashlib.sha256(pngs(colour_set, 1)["red/0000.png"]).hexdigest()],
            "adapter": adapter["id"]}
    key = {"Idempotency-Key": f"k-{time.monotonic_ns()}"}
    first = api.post("/v1/predictions", json=body, headers=key)
    again = api.post("/v1/predictions", json=body, headers=key)
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    other = api.post("/v1/predictions", json={**body, "top_k": 1}, headers=key)
    assert other.status_code == 422 and "Idempotency-Key" in other.json()["problems"][0]
    pid = first.json()["id"]
    assert api.get(f"/v1/predictions/{pid}/results").status_code == 409
    stranger = {"Authorization": f"Bearer {new_key(api, ['admin'], tenant='predict-t3')}"}
    for url in (f"/v1/predictions/{pid}", f"/v1/predictions/{pid}/events",
                f"/v1/predictions/{pid}/results"):
        assert api.get(url, headers=stranger).status_code == 404
    assert api.post(f"/v1/predictions/{pid}/cancel", headers=stranger).status_code == 404
    cancelled = api.post(f"/v1/predictions/{pid}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert api.post(f"/v1/predictions/{pid}/cancel").status_code == 409
    r = api.get(f"/v1/predictions/{pid}/results", params={"format": "csv"})
    assert r.status_code == 409 and "cancelled" in r.json()["message"]
    assert pid not in {p["id"] for p in api.get("/v1/predictions", headers=stranger)
                       .json()["data"]}


def many(colour_set, n: int) -> bytes:
    """A zip of ``n`` images (the colour set's, repeated under other names)."""
    files = pngs(colour_set, per_class=16)
    images = list(files.values())
    return zip_of({f"batch/{i:05d}.png": images[i % len(images)] for i in range(n)})


def progress_events(api, pid: str) -> list[dict]:
    return [e for e in api.get(f"/v1/predictions/{pid}/events", params={"limit": 1000})
            .json()["data"]]


def test_a_running_prediction_is_cancelled_between_batches(api, start_worker, adapter,
                                                           colour_set, monkeypatch):
    monkeypatch.setattr(api.app.state.context.settings, "predict_chunk_size", 16)
    start_worker(CLIPFIT_PREDICT_BATCH_SIZE="1")
    r = api.post("/v1/predictions", data={"adapter": adapter["id"]},
                 files={"dataset": ("p.zip", many(colour_set, 1200), "application/zip")})
    assert r.status_code == 202, r.text
    pid = r.json()["id"]
    wait_prediction(api, pid, lambda b: b["counts"]["done"] >= 32)
    r = api.post(f"/v1/predictions/{pid}/cancel")
    assert r.status_code == 200, r.text
    done = wait_prediction(api, pid, lambda b: b["status"] in FINISHED, timeout=60)
    assert done["status"] == "cancelled" and done["counts"]["done"] < 1200
    kinds = [e["kind"] for e in progress_events(api, pid)]
    assert "cancel_requested" in kinds and kinds[-1] == "cancelled"


def test_a_killed_worker_resumes_without_redoing_finished_chunks(api, start_worker, adapter,
                                                                 colour_set, monkeypatch):
    monkeypatch.setattr(api.app.state.context.settings, "predict_chunk_size", 16)
    first = start_worker(CLIPFIT_PREDICT_BATCH_SIZE="1")
    n = 600
    r = api.post("/v1/predictions", data={"adapter": adapter["id"], "top_k": "1"},
                 files={"dataset": ("p.zip", many(colour_set, n), "application/zip")})
    assert r.status_code == 202, r.text
    pid = r.json()["id"]
    wait_prediction(api, pid, lambda b: b["counts"]["done"] >= 64)
    first.kill()
    killed_at = api.get(f"/v1/predictions/{pid}").json()
    assert killed_at["status"] == "running" and killed_at["counts"]["done"] < n
    time.sleep(2.5)  # longer than the second worker's visibility timeout below
    start_worker(CLIPFIT_VISIBILITY_TIMEOUT_SECONDS="2", CLIPFIT_PREDICT_BATCH_SIZE="8")
    done = wait_prediction(api, pid, lambda b: b["status"] in FINISHED, timeout=180)
    assert done["status"] == "succeeded" and done["attempts"] == 2, done

    events = progress_events(api, pid)
    resumed = [e["payload"] for e in events if e["kind"] == "resumed"]
    assert len(resumed) == 1 and resumed[0]["chunks_done"] >= 4
    chunks = [e["payload"] for e in events if e["kind"] == "progress"]
    # every chunk classified and recorded once: the second attempt did only the rest
    assert sorted(p["chunk"] for p in chunks) == list(range(n // 16 + (n % 16 > 0)))
    second = [p["chunk"] for p in chunks if p["attempt"] == 2]
    assert len(second) == resumed[0]["chunks"] - resumed[0]["chunks_done"]
    assert min(second) == resumed[0]["chunks_done"]
    rows, _ = results(api, pid)
    assert [r["name"] for r in rows] == [f"batch/{i:05d}.png" for i in range(n)]
    assert all(r["error"] is None and len(r["top_k"]) == 1 for r in rows)



def test_deep_zips_and_oversized_results_are_refused(api, adapter, colour_set, monkeypatch):
    """A zip nested deeper than the reader walks (it ended in a RecursionError, a 500) and
    results beyond MAX_RESULT_ANSWERS (images x top_k): one 422 each, nothing stored."""
    import service.predictions

    before = stored_counts(api)
    two = dict(list(pngs(colour_set, per_class=1).items())[:2])
    image = next(iter(two.values()))
    deep = {"/".join(["a"] * 3000) + "/x.png": image}
    r = api.post("/v1/predictions", data={"adapter": adapter["id"]},
                 files={"dataset": ("p.zip", zip_of(deep), "application/zip")})
    assert r.status_code == 422 and "nested deeper than 32 folders" in r.text, r.text
    r = api.post("/v1/jobs", files={"dataset": ("d.zip", zip_of(deep))},
                 data={"base_model": "clipfit-tiny"})
    assert r.status_code == 422 and "nested deeper than 32 folders" in r.text, r.text
    monkeypatch.setattr(service.predictions, "MAX_RESULT_ANSWERS", 3)
    r = api.post("/v1/predictions", data={"adapter": adapter["id"], "top_k": "2"},
                 files={"dataset": ("p.zip", zip_of(two), "application/zip")})
    assert r.status_code == 422 and "2 images x 2 answers" in r.text, r.text
    assert stored_counts(api) == before
    r = api.post("/v1/predictions", data={"adapter": adapter["id"], "top_k": "1"},
                 files={"dataset": ("p.zip", zip_of(two), "application/zip")})
    assert r.status_code == 202, r.text  # within the bound: accepted
    cancel = api.post(f"/v1/predictions/{r.json()['id']}/cancel")
    assert cancel.status_code in (200, 202), cancel.text
