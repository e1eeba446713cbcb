"""Recovery driven by the database: a Redis that forgot its queue, a worker that died with a
job (cancelled at once once its heartbeat is stale)."""

from __future__ import annotations

import time

import redis

from .conftest import FINISHED, REDIS_DB, image_files, wait_for

TRAIN = {"base_model": "clipfit-tiny", "lr": "0.1", "batch_size": "8", "val_fraction": "0.25"}


def test_queued_jobs_lost_by_redis_are_sent_again(api, start_worker, colour_set):
    files, labels = image_files(colour_set)
    job = api.post("/v1/jobs", files=files, data={**TRAIN, "epochs": "2", "labels": labels})
    assert job.status_code == 202
    redis.Redis(port=6379, db=REDIS_DB).flushdb()  # the broker restarted without its data
    start = time.monotonic()
    start_worker()
    done = wait_for(api, job.json()["id"], lambda j: j["status"] in FINISHED, timeout=120)
    assert done["status"] == "succeeded" and done["attempts"] == 1, done
    print(f"\nqueued job lost by Redis: succeeded {time.monotonic() - start:.1f} s after a "
          "worker started")


def test_a_dead_workers_job_is_cancelled_at_once_when_stale(api, start_worker, colour_set):
    files, labels = image_files(colour_set)
    worker = start_worker()
    job_id = api.post("/v1/jobs", files=files,
                      data={**TRAIN, "epochs": "200", "labels": labels}).json()["id"]
    wait_for(api, job_id, lambda j: (j["progress"] or {}).get("step", 0) >= 3)
    worker.kill()
    time.sleep(4.5)  # longer than CLIPFIT_STALE_AFTER_SECONDS in these tests
    r = api.post(f"/v1/jobs/{job_id}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.json()


def test_a_killed_workers_job_resumes_from_its_last_epoch(api, start_worker, colour_set):
    files, labels = image_files(colour_set)
    first = start_worker()
    job_id = api.post("/v1/jobs", files=files,
                      data={**TRAIN, "epochs": "40", "labels": labels}).json()["id"]
    wait_for(api, job_id, lambda j: (j["progress"] or {}).get("epoch", 0) >= 5)
    first.kill()
    reached = api.get(f"/v1/jobs/{job_id}").json()["progress"]["step"]
    start_worker()
    done = wait_for(api, job_id, lambda j: j["status"] in FINISHED, timeout=180)
    assert done["status"] == "succeeded" and done["attempts"] == 2, done
    events = api.get(f"/v1/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]
    resumed = [e["payload"] for e in events if e["kind"] == "resumed"]
    assert len(resumed) == 1 and resumed[0]["from_epoch"] >= 4, resumed
    after = [e["payload"] for e in events
             if e["kind"] == "progress" and e["id"] > next(
                 e["id"] for e in events if e["kind"] == "resumed")]
    assert after[0]["epoch"] == resumed[0]["from_epoch"] + 1  # not from epoch 1
    print(f"\nkilled after step {reached} or later (the last progress written) of "
          f"{done['progress']['total_steps']}: the next attempt resumed after epoch "
          f"{resumed[0]['from_epoch']} of 40 instead of starting over")
