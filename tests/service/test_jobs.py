"""Jobs end to end: API in this process, PostgreSQL, Redis, real Celery worker processes."""

from __future__ import annotations

import base64
import io
import json
import zipfile

from sqlalchemy import func, select

from clipfit_core.data import Sample
from registry.models import Adapter, Job, JobEvent

from .conftest import FINISHED, image_files, wait_for, zip_folder

TRAIN = {"base_model": "clipfit-tiny", "epochs": "40", "lr": "0.1", "batch_size": "16",
         "val_fraction": "0.25", "seed": "1"}


def count(api, model) -> int:
    with api.app.state.context.sessions() as s:
        return s.scalar(select(func.count()).select_from(model))


def test_submit_progress_succeed_classify(api, start_worker, colour_set):
    start_worker()
    files, labels = image_files(colour_set)
    r = api.post("/v1/jobs", files=files, data={**TRAIN, "labels": labels, "name": "colours"})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] == "queued" and job["hyperparameters"]["epochs"] == 40

    job = wait_for(api, job["id"], lambda j: j["status"] in FINISHED)
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 1 and job["progress"]["step"] == job["progress"]["total_steps"]
    events = api.get(f"/v1/jobs/{job['id']}/events").json()["data"]
    kinds = [e["kind"] for e in events]
    assert kinds[:2] == ["queued", "running"] and kinds[-1] == "succeeded"
    progress = [e["payload"] for e in events if e["kind"] == "progress"]
    assert len(progress) >= 2 and progress[-1]["step"] == progress[-1]["total_steps"]
    assert all({"epoch", "step", "total_steps", "loss", "eta_seconds"} <= p.keys()
               for p in progress)

    adapter = api.get(f"/v1/adapters/{job['adapter_id']}").json()
    assert adapter["job_id"] == job["id"] and adapter["name"] == "colours"
    assert adapter["classnames"] == ["blue", "green", "red", "yellow"]
    assert adapter["trainable_count"] > 0 and 0 < adapter["size_bytes"] < 200_000
    metrics = adapter["metrics"]
    assert metrics["val_images"] == 16  # 4 per class
    assert metrics["val_accuracy"] >= 0.75 > metrics["zero_shot_val_accuracy"], metrics

    # classify with the adapter: multipart, then JSON with base64; same answers
    images = [(colour_set / c / "0000.png").read_bytes() for c in ("red", "blue", "yellow")]
    r = api.post("/v1/classify", data={"adapter_id": adapter["id"], "top_k": "2"},
                 files=[("images", (f"{i}.png", b, "image/png")) for i, b in enumerate(images)])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["adapter_id"] == adapter["id"] and len(body["predictions"]) == 3
    for p in body["predictions"]:
        assert len(p["top_k"]) == 2 and p["label"] == p["top_k"][0]["label"]
        assert p["top_k"][0]["prob"] >= p["top_k"][1]["prob"]
    assert [p["label"] for p in body["predictions"]] == ["red", "blue", "yellow"]
    r2 = api.post("/v1/classify", json={"adapter_id": adapter["id"], "top_k": 2,
                                        "images": [base64.b64encode(b).decode() for b in images]})
    assert r2.json()["predictions"] == body["predictions"]
    # the tuned model among other classes (the paper's new-class use)
    r3 = api.post("/v1/classify", json={"adapter_id": adapter["id"], "classes": ["red", "cyan"],
                                        "images": [base64.b64encode(images[0]).decode()]})
    assert [t["label"] for t in r3.json()["predictions"][0]["top_k"]] in (["red", "cyan"],
                                                                          ["cyan", "red"])

    # the two delta files, downloadable
    z = zipfile.ZipFile(io.BytesIO(api.get(f"/v1/adapters/{adapter['id']}/download").content))
    assert sorted(z.namelist()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert json.loads(z.read("adapter_config.json"))["base_fingerprint"] == \
        adapter["base_fingerprint"]

    # live events as Server-Sent Events (the job is finished, so the stream ends)
    with api.stream("GET", f"/v1/jobs/{job['id']}/events?stream=true") as stream:
        text = "".join(stream.iter_text())
    assert text.count("event: progress") == len(progress) and "event: succeeded" in text

    listed = api.get("/v1/jobs", params={"status": "succeeded"}).json()["data"]
    assert job["id"] in [j["id"] for j in listed]
    metrics = api.get("/metrics").text
    assert "clipfit_jobs{status=\"succeeded\"}" in metrics
    assert "clipfit_queue_depth" in metrics and "clipfit_http_requests_total" in metrics
    assert 'clipfit_cache_events{cache="delta",kind="hit"}' in metrics


def test_cancel_a_running_job(api, start_worker, colour_set):
    start_worker()
    files, labels = image_files(colour_set)
    r = api.post("/v1/jobs", files=files,
                 data={**TRAIN, "labels": labels, "epochs": "200", "batch_size": "4"})
    job_id = r.json()["id"]
    wait_for(api, job_id, lambda j: j["status"] == "running" and j["progress"])
    r = api.post(f"/v1/jobs/{job_id}/cancel")
    assert r.status_code == 200 and r.json()["cancel_requested"] is True
    job = wait_for(api, job_id, lambda j: j["status"] in FINISHED, timeout=30)
    assert job["status"] == "cancelled" and job["adapter_id"] is None
    assert job["progress"]["step"] < job["progress"]["total_steps"]
    r = api.post(f"/v1/jobs/{job_id}/cancel")
    assert r.status_code == 409 and "cancelled" in r.json()["detail"]


def test_cancel_a_queued_job_without_a_worker(api, colour_set):
    files, labels = image_files(colour_set)
    job_id = api.post("/v1/jobs", files=files, data={**TRAIN, "labels": labels}).json()["id"]
    r = api.post(f"/v1/jobs/{job_id}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"


def test_idempotency_key_returns_the_same_job(api, colour_set):
    files, labels = image_files(colour_set)
    before = count(api, Job)
    headers = {"Idempotency-Key": "colours-once"}
    a = api.post("/v1/jobs", files=files, data={**TRAIN, "labels": labels}, headers=headers)
    b = api.post("/v1/jobs", files=files, data={**TRAIN, "labels": labels}, headers=headers)
    assert a.status_code == b.status_code == 202
    assert a.json()["id"] == b.json()["id"]
    assert count(api, Job) == before + 1
    api.post(f"/v1/jobs/{a.json()['id']}/cancel")  # no worker needed for it


def test_zip_upload(api, colour_set):
    r = api.post("/v1/jobs", files={"dataset": ("colours.zip", zip_folder(colour_set))},
                 data={**TRAIN, "classes": "red,green,blue,yellow"})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    api.post(f"/v1/jobs/{job_id}/cancel")
    from registry import crud
    with api.app.state.context.sessions() as s:
        classnames, images = crud.training_images(s, job=crud.get_job(s, job_id=job_id))
    assert classnames == ["red", "green", "blue", "yellow"] and len(images) == 64
    assert [label for _, label, _ in images].count(classnames.index("blue")) == 16


def test_validation_failures_store_nothing(api, colour_set):
    files, labels = image_files(colour_set)
    tables = (Job, JobEvent, Adapter)
    before = [count(api, t) for t in tables]
    from registry.models import Blob, Dataset

    blobs, datasets = count(api, Blob), count(api, Dataset)
    broken = [*files[:8], ("images", ("broken.png", b"not an image", "image/png"))]
    cases = [
        # one bad image among good ones, a label for a class with no images in the list
        ({"data": {**TRAIN, "labels": [*labels[:8], "blue"]}, "files": broken},
         ["broken.png: not a readable image", "need at least 2 classes"]),
        ({"data": {**TRAIN, "labels": labels[:3]}, "files": files}, ["64 images but 3 labels"]),
        ({"data": {**TRAIN, "labels": labels, "base_model": "RN50:openai", "epochs": "100000",
                   "template": "no placeholder"}, "files": files},
         ["base_model 'RN50:openai' is not allowed", "epochs 100000 exceeds",
          "template"]),
        ({"data": {**TRAIN, "classes": "red,green,purple"},
          "files": {"dataset": ("d.zip", zip_folder(colour_set))}},
         ["labels not among the classes: 'blue', 'yellow'",
          "classes without images: 'purple'"]),
        ({"data": TRAIN, "files": {"dataset": ("d.zip", b"PK-not-a-zip")}}, ["not a zip"]),
        ({"data": {**TRAIN, "lr": "-1"}, "files": files}, ["lr"]),
    ]
    for request, expected in cases:
        r = api.post("/v1/jobs", **request)
        assert r.status_code == 422, r.text
        text = json.dumps(r.json())
        for fragment in expected:
            assert fragment in text, (fragment, text)
    assert [count(api, t) for t in tables] == before
    assert (count(api, Blob), count(api, Dataset)) == (blobs, datasets)


def test_zip_with_unsafe_paths_is_refused(api, colour_set):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("../evil/x.png", (colour_set / "red" / "0000.png").read_bytes())
        z.writestr("red/0000.png", (colour_set / "red" / "0000.png").read_bytes())
    r = api.post("/v1/jobs", files={"dataset": ("d.zip", buf.getvalue())}, data=TRAIN)
    assert r.status_code == 422 and "unsafe paths" in r.text


def test_unknown_ids_are_404(api):
    assert api.get("/v1/jobs/nope").status_code == 404
    assert api.post("/v1/jobs/nope/cancel").status_code == 404
    assert api.get("/v1/adapters/nope").status_code == 404
    r = api.post("/v1/classify", json={"adapter_id": "nope", "images": ["aGk="]})
    assert r.status_code == 404 and "nope" in r.text


def test_a_job_survives_its_worker_being_killed(api, start_worker, colour_set):
    """acks_late: the unacknowledged message returns to the queue after the visibility
    timeout, another worker runs the job from the start, and it finishes once."""
    first = start_worker()
    files, labels = image_files(colour_set)
    r = api.post("/v1/jobs", files=files,
                 data={**TRAIN, "labels": labels, "epochs": "80", "batch_size": "8"})
    job_id = r.json()["id"]
    wait_for(api, job_id, lambda j: j["status"] == "running" and (j["progress"] or {})
             .get("step", 0) >= 5)
    first.kill()
    assert api.get(f"/v1/jobs/{job_id}").json()["status"] == "running"  # cut off mid-run
    import time

    time.sleep(2.5)  # longer than the second worker's visibility timeout below
    start_worker(CLIPFIT_VISIBILITY_TIMEOUT_SECONDS="2")
    job = wait_for(api, job_id, lambda j: j["status"] in FINISHED, timeout=180)
    assert job["status"] == "succeeded" and job["attempts"] == 2, job
    events = [e["kind"] for e in api.get(f"/v1/jobs/{job_id}/events",
                                         params={"limit": 1000}).json()["data"]]
    assert events.count("running") == 2 and events.count("succeeded") == 1
    with api.app.state.context.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Adapter)
                        .where(Adapter.job_id == job_id)) == 1


def test_request_size_limit(api, colour_set, monkeypatch):
    monkeypatch.setattr(api.app.state.settings, "max_request_bytes", 2000)
    before = count(api, Job)
    r = api.post("/v1/jobs", files={"dataset": ("d.zip", zip_folder(colour_set))}, data=TRAIN)
    assert r.status_code == 413 and "exceeds the limit of 2000 bytes" in r.json()["detail"]
    assert count(api, Job) == before


def test_a_job_submitted_while_the_broker_is_down_is_kept_for_the_reconciler(
        api, colour_set, monkeypatch, caplog):
    from datetime import timedelta

    from kombu.exceptions import OperationalError

    from registry import jobs as job_rows
    from registry.models import utcnow

    def broker_down(job_id):
        raise OperationalError("Error 111 connecting to redis:6379. Connection refused.")

    monkeypatch.setattr(api.app.state.context.queue, "enqueue", broker_down)
    files, labels = image_files(colour_set)
    before = count(api, Job)
    r = api.post("/v1/jobs", files=files, data={**TRAIN, "labels": labels})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] == "queued" and count(api, Job) == before + 1
    assert api.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"
    assert f"job {job['id']} is stored but not sent" in caplog.text
    with api.app.state.context.sessions() as s:
        assert s.get(Job, job["id"]).enqueued_at is None  # never sent...
        # ...so the reconciler's next round sends it, without waiting requeue_after_seconds
        recent = utcnow() - timedelta(seconds=api.app.state.settings.requeue_after_seconds)
        assert job["id"] in [j.id for j in job_rows.queued_jobs_sent_before(s, before=recent)]
    assert api.post(f"/v1/jobs/{job['id']}/cancel").json()["status"] == "cancelled"


def _png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (9, 9), (200, 10, 10)).save(buf, "PNG")
    return buf.getvalue()


def test_classify_refuses_bad_requests_with_reasons(api, colour_set):
    red = (colour_set / "red" / "0000.png").read_bytes()
    cases = [
        ({"data": {"base_model": "clipfit-tiny", "classes": "a,b", "top_k": "many"},
          "files": [("images", ("r.png", red, "image/png"))]}, "top_k: Input should be a valid integer"),
        ({"data": {"base_model": "clipfit-tiny", "classes": "a,b"},
          "files": [("images", ("x.png", b"junk", "image/png"))]}, "x.png: not a readable"),
        ({"data": {"base_model": "clipfit-tiny"},
          "files": [("images", ("r.png", red, "image/png"))]}, "give adapter_id, or base_model"),
        ({"data": {"base_model": "ViT-H-14:laion2b", "classes": "a,b"},
          "files": [("images", ("r.png", red, "image/png"))]}, "is not allowed"),
        ({"json": {"base_model": "clipfit-tiny", "classes": ["a"], "images": ["%%%"]}},
         "images[0]: not valid base64"),
        ({"json": {"base_model": "clipfit-tiny", "images": "not a list"}},
         "invalid classification request"),
        ({"data": {"base_model": "clipfit-tiny", "classes": "a,b"}}, "no images"),
    ]
    for request, fragment in cases:
        r = api.post("/v1/classify", **request)
        assert r.status_code == 422 and fragment in r.text, (fragment, r.text)


def test_lists_page_with_cursors(api, colour_set):
    files, labels = image_files(colour_set)
    for _ in range(3):  # queued, then cancelled (no worker needed): two events each
        job_id = api.post("/v1/jobs", files=files, data={**TRAIN, "labels": labels}).json()["id"]
        api.post(f"/v1/jobs/{job_id}/cancel")
    everything = api.get("/v1/jobs", params={"limit": 200}).json()["data"]
    assert len(everything) >= 3
    seen, cursor = [], None
    while True:
        page = api.get("/v1/jobs", params={"limit": 2, **({"cursor": cursor} if cursor else {})})
        body = page.json()
        seen += [j["id"] for j in body["data"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == [j["id"] for j in everything]  # newest first, each once
    events = api.get(f"/v1/jobs/{seen[0]}/events", params={"limit": 1}).json()
    more = api.get(f"/v1/jobs/{seen[0]}/events", params={"cursor": events["next_cursor"]}).json()
    assert more["data"][0]["id"] > events["data"][0]["id"]
    assert api.get("/v1/jobs", params={"cursor": "garbage"}).status_code == 422
    assert api.get("/v1/jobs", params={"status": "sleeping"}).status_code == 422


def test_a_stored_spec_this_version_refuses_fails_the_job(api, start_worker, db_session):
    """A job stored by an older version with a value the spec now refuses fails with the
    reason; it is not left queued (its message acknowledged) forever."""
    from registry import crud

    job = crud.create_job(db_session, tenant_id="default", classnames=["a", "b"],
                          images=[Sample(_png(), 0, "a.png"), Sample(_png(), 1, "b.png")],
                          base_model="clipfit-tiny", templates=["a photo of a {}."],
                          hyperparameters={"epochs": 1, "seed": -1})
    db_session.commit()
    api.app.state.context.queue.enqueue(job.id)
    start_worker()
    done = wait_for(api, job.id, lambda j: j["status"] in FINISHED, timeout=120)
    assert done["status"] == "failed" and "seed must be >= 0" in done["error"], done


def test_auto_hyperparameters_are_resolved_and_echoed(api, colour_set):
    files, labels = image_files(colour_set)
    r = api.post("/v1/jobs", files=files, data={
        "labels": labels, "base_model": "clipfit-tiny", "epochs": "auto", "lr": "auto",
        "val_fraction": "0.25"})
    assert r.status_code == 202, r.text
    hp = r.json()["hyperparameters"]
    assert r.json()["auto"] == ["epochs", "lr"]  # batch_size was not auto: stays 32
    assert "auto" not in hp and r.json()["parent_adapter_id"] is None
    assert (hp["epochs"], hp["lr"], hp["batch_size"]) == (30, 0.1, 32)
    r = api.post("/v1/jobs", files=files, data={
        "labels": labels, "base_model": "clipfit-tiny", "epochs": "sometimes"})
    assert r.status_code == 422 and "epochs" in r.text

