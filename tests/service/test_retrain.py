"""Retrain (PostgreSQL, Redis, clipfit-tiny): labelled captures become a new dataset version
and a warm-started job makes the next version of the name, with the name's benchmark set
kept out of training; refusals store nothing; retrain_after starts one from the labels;
labelled captures waiting for a retrain outlive their retention.

The end-to-end test trains with a real worker. The others need only a parent with a job and
a dataset: a job is submitted through the API and its adapter stored as the worker stores
one (registry.adapters.store_adapter), so no training runs and the retrains they start stay
queued (they are cancelled at the end)."""

from __future__ import annotations

import hashlib
import io
import uuid
import zipfile
from datetime import timedelta

from safetensors.torch import load as load_tensors
from sqlalchemy import func, select

from clipfit_core.config import TrainConfig, prepare_training_set
from clipfit_core.export import read_delta_zip
from registry import crud
from registry.models import BenchmarkImage, Blob, Capture, Dataset, DatasetImage, Job, utcnow
from service.jobs import job_dataset, stored_dataset

from .conftest import FINISHED, collect_released, image_files, new_key, wait_for
from .test_aliases import _delta_zip

TRAIN = {"base_model": "clipfit-tiny", "epochs": "3", "lr": "0.1", "batch_size": "16",
         "val_fraction": "0.25", "seed": "1"}


def unique_png(n: int) -> bytes:
    """A 16x16 image of one colour, distinct for each ``n`` (and from the colour set)."""
    from PIL import Image

    buf = io.BytesIO()
    colour = (n * 37 % 256, n * 91 % 256, 200 + n % 50)
    Image.new("RGB", (16, 16), colour).save(buf, "PNG")
    return buf.getvalue()


def unique_files(start: int, n: int) -> list:
    return [("images", (f"seen-{i}.png", unique_png(i), "image/png"))
            for i in range(start, start + n)]


def captured(api, ref: str, start: int, n: int) -> list[dict]:
    """Classify ``n`` new images through ``ref`` (capture on, sample_rate 1): the captures,
    in the order they were sent."""
    r = api.post("/v1/classify", data={"adapter": ref}, files=unique_files(start, n))
    assert r.status_code == 200, r.text
    api.app.state.context.captures.flush()
    rows = api.get(f"/v1/adapters/{ref}/captures", params={"limit": 200}).json()["data"]
    by_name = {c["filename"]: c for c in rows}
    return [by_name[f"seen-{i}.png"] for i in range(start, start + n)]


def capture_on(api, ref: str, **rules) -> dict:
    r = api.put(f"/v1/adapters/{ref}/capture", json={"sample_rate": 1.0, **rules})
    assert r.status_code == 200, r.text
    return r.json()


def label(api, ref: str, capture_id: str, name: str, **extra) -> dict:
    r = api.post(f"/v1/adapters/{ref}/captures/{capture_id}", json={"label": name, **extra})
    assert r.status_code == 200, r.text
    return r.json()


def rows(api, model, *where) -> int:
    with api.app.state.context.sessions() as s:
        return s.scalar(select(func.count()).select_from(model).where(*where))


def stored_parent(api, tiny, colour_set, name: str | None, **train) -> dict:
    """A version of ``name`` with a job and a dataset, stored as a worker stores one (the
    job never trains)."""
    files, labels = image_files(colour_set)
    r = api.post("/v1/jobs", files=files, data={**TRAIN, **train, "labels": labels,
                                                **({"name": name} if name else {})})
    assert r.status_code == 202, r.text
    with api.app.state.context.sessions() as s:
        job = crud.get_job(s, job_id=r.json()["id"])
        delta = read_delta_zip(_delta_zip(tiny, 5, list(job.dataset.classnames)))
        adapter = crud.store_adapter(s, job=job, weights=delta.to_bytes(),
                                     config=delta.config_dict(), metrics={}, name=name)
        s.commit()
        return api.get(f"/v1/adapters/{adapter.id}").json()


def cancel_queued(api, lineage: str) -> None:
    """Leave no retrain of ``lineage`` queued for later tests' workers."""
    with api.app.state.context.sessions() as s:
        ids = [j.id for j in crud.retrain_jobs(s, tenant_id=tenant_of(api), lineage=lineage)
               if j.status not in FINISHED]
    for ident in ids:
        api.post(f"/v1/jobs/{ident}/cancel")


def tenant_of(api) -> str:
    with api.app.state.context.sessions() as s:
        return crud.get_tenant_by_name(s, name="default").id


def delta_shapes(api, adapter_id: str) -> dict[str, tuple]:
    data = api.get(f"/v1/adapters/{adapter_id}/download").content
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        tensors = load_tensors(z.read("adapter_model.safetensors"))
    return {k: tuple(v.shape) for k, v in tensors.items()}


def test_retrain_end_to_end(api, start_worker, colour_set):
    start_worker()
    lineage = f"shades-{uuid.uuid4().hex[:8]}"
    files, labels = image_files(colour_set)
    r = api.post("/v1/jobs", files=files, data={**TRAIN, "labels": labels, "name": lineage})
    first_job = wait_for(api, r.json()["id"], lambda j: j["status"] in FINISHED)
    assert first_job["status"] == "succeeded", first_job
    v1 = api.get(f"/v1/adapters/{first_job['adapter_id']}").json()
    assert (v1["version"], v1["dataset_id"], v1["benchmark_images"]) == \
        (1, first_job["dataset_id"], None)

    capture_on(api, f"{lineage}@1")
    caps = captured(api, f"{lineage}@1", 0, 11)
    # labelled one at a time: the 5th and the 10th go to the benchmark set
    names = ["purple", "purple", "red", "green", "blue", "yellow", "red", "green", "blue",
             "yellow", "red"]
    for capture, name in zip(caps, names):
        label(api, f"{lineage}@1", capture["id"], name, new_class=name == "purple")
    r = api.post(f"/v1/adapters/{lineage}@1/retrain", json={
        "promote": "auto", "alias": "production", "hyperparameters": {"epochs": 2}})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] == "queued" and job["parent_adapter_id"] == v1["id"]
    assert (job["name"], job["base_model"], job["templates"]) == \
        (lineage, first_job["base_model"], first_job["templates"])
    assert job["hyperparameters"] == first_job["hyperparameters"] | {"epochs": 2}
    held_out = v1["metrics"]["val_images"]
    assert held_out == 16  # 4 of each colour's 16
    assert job["retrain"] == {
        "lineage": lineage, "benchmark_images": held_out + 2, "added": 9, "benchmarked": 2,
        "held_out": held_out, "promote": "auto", "alias": "production",
        "trigger": "request", "continues": None}

    # the new dataset version: the parent's 64 images, then the 9 captures; purple is new
    version = api.get(f"/v1/datasets/{job['dataset_id']}").json()
    parent = api.get(f"/v1/datasets/{v1['dataset_id']}").json()
    assert (version["version"], version["parent_id"], version["images"]) == \
        (2, parent["id"], 64 + 9)
    assert version["classnames"] == parent["classnames"] + ["purple"]
    assert version["counts"]["purple"] == 2 and version["counts"]["red"] == 16 + 3
    assert (parent["images"], parent["children"]) == (64, [version["id"]])
    after = {c["id"]: c for c in api.get(f"/v1/adapters/{lineage}@1/captures",
                                         params={"limit": 200}).json()["data"]}
    benchmarked = {caps[4]["id"], caps[9]["id"]}
    for capture in caps:
        taken = after[capture["id"]]
        assert (taken["benchmark"], taken["dataset_id"]) == (
            (True, None) if capture["id"] in benchmarked else (False, version["id"]))

    with api.app.state.context.sessions() as s:
        bench = s.scalars(select(BenchmarkImage).where(BenchmarkImage.lineage == lineage)
                          .order_by(BenchmarkImage.position)).all()
        version_blobs = set(s.scalars(select(DatasetImage.blob_sha256).where(
            DatasetImage.dataset_id == version["id"])))
        # the held-out split, as the worker drew it: its own reader, the job's spec
        root = crud.get_job(s, job_id=first_job["id"])
        config = TrainConfig.from_dict(root.hyperparameters, templates=root.templates)
        _, val = prepare_training_set(stored_dataset(s, dataset_id=root.dataset_id), config)
    drawn = {hashlib.sha256(x.source).hexdigest(): parent["classnames"][x.label]
             for x in val.samples}
    assert [b.source for b in bench] == ["held_out"] * held_out + ["capture"] * 2
    assert {b.blob_sha256: b.label for b in bench[:held_out]} == drawn
    assert [(b.capture_id, b.label) for b in bench[held_out:]] == \
        [(caps[4]["id"], "blue"), (caps[9]["id"], "yellow")]
    assert not {b.blob_sha256 for b in bench[held_out:]} & version_blobs
    report = api.get(f"/v1/adapters/{v1['id']}/evaluation").json()["evaluation"]
    assert {c["class"]: c["images"] for c in report["tuned"]["per_class"]} == {
        name: list(drawn.values()).count(name) for name in parent["classnames"]}

    job = wait_for(api, job["id"], lambda j: j["status"] in FINISHED)
    assert job["status"] == "succeeded", job
    v2 = api.get(f"/v1/adapters/{job['adapter_id']}").json()
    assert (v2["name"], v2["version"], v2["dataset_id"], v2["benchmark_images"]) == \
        (lineage, 2, version["id"], held_out + 2)
    assert v2["hyperparameters"]["parent_adapter_id"] == v1["id"]
    assert v2["classnames"] == version["classnames"]
    # no benchmark image was trained on: the held-out ones were left out of the version
    assert v2["metrics"]["benchmark_excluded"] == held_out
    with api.app.state.context.sessions() as s:
        trained, left_out = job_dataset(s, crud.get_job(s, job_id=job["id"]))
    assert left_out == held_out and len(trained) == 64 + 9 - held_out
    assert not {hashlib.sha256(x.source).hexdigest() for x in trained.samples} & \
        {b.blob_sha256 for b in bench}
    train_set, _ = prepare_training_set(trained, TrainConfig.from_dict(
        job["hyperparameters"], templates=job["templates"]))
    assert v2["hyperparameters"]["train_images"] == len(train_set)
    # a warm start with a new class: the delta is the same tensors (no per-class part)
    assert delta_shapes(api, v2["id"]) == delta_shapes(api, v1["id"])

    # compared on the benchmark set beside v1 and zero-shot, over v2's classes
    comparison = v2["metrics"]["comparison"]
    assert (comparison["previous_adapter_id"], comparison["images"],
            comparison["excluded_images"]) == (v1["id"], held_out + 2, 0)
    assert comparison["classnames"] == v2["classnames"]
    with api.app.state.context.sessions() as s:
        bench_images = [(crud.get_blob(s, sha256=b.blob_sha256), b.label) for b in bench]
    for model, reference in (("candidate", v2["id"]), ("previous", v1["id"])):
        answers = api.post("/v1/classify", data={
            "adapter": reference, "classes": ",".join(v2["classnames"]), "calibrated": "false"},
            files=[("images", (f"b{i}.png", data, "image/png"))
                   for i, (data, _) in enumerate(bench_images)]).json()["predictions"]
        right = sum(a["top_k"][0]["label"] == name
                    for a, (_, name) in zip(answers, bench_images))
        assert comparison[model]["accuracy"] == round(right / len(bench_images), 4), model
    assert comparison["not_worse"] == (comparison["vs_previous"]["high"] >= 0)
    production = api.get("/v1/aliases", params={"name": lineage}).json()["data"]
    promoted = comparison["promotion"]
    if comparison["not_worse"]:  # promote=auto, alias=production: made, pointing at v2
        assert promoted["moved_aliases"] == ["production"]
        assert [(a["alias"], a["adapter_id"]) for a in production] == [("production", v2["id"])]
    else:
        assert promoted["moved_aliases"] == [] and production == []
    events = api.get(f"/v1/jobs/{job['id']}/events", params={"limit": 1000}).json()["data"]
    compared = [e["payload"] for e in events if e["kind"] == "compared"]
    assert len(compared) == 1 and compared[0]["moved_aliases"] == promoted["moved_aliases"]

    r = api.post(f"/v1/adapters/{lineage}@2/retrain")
    assert r.status_code == 409 and "no new labelled captures" in r.json()["message"]
    # versions that a job used, or that a later version continues, are kept
    r = api.delete(f"/v1/datasets/{parent['id']}")
    assert r.status_code == 409 and "job(s) used" in r.json()["message"]


def test_refusals_store_nothing(api, tiny, colour_set, monkeypatch):
    lineage = f"refused-{uuid.uuid4().hex[:8]}"
    adapter = stored_parent(api, tiny, colour_set, lineage)
    ref = f"{lineage}@1"
    r = api.post(f"/v1/adapters/{ref}/retrain", json={})
    assert r.status_code == 409, r.text
    assert r.json()["message"].startswith(f"no new labelled captures for '{lineage}'")

    capture_on(api, ref)
    for capture in captured(api, ref, 100, 3):
        label(api, ref, capture["id"], "red")
    gone = stored_parent(api, tiny, colour_set, None)
    assert api.delete(f"/v1/adapters/{gone['id']}").status_code == 204
    unnamed = stored_parent(api, tiny, colour_set, None)
    imported = api.post("/v1/adapters", data={"name": f"imp-{uuid.uuid4().hex[:6]}"}, files={
        "file": ("d.zip", _delta_zip(tiny, 3, ["red", "green", "blue", "yellow"]))}).json()

    def state() -> tuple:
        return (rows(api, Job), rows(api, Dataset), rows(api, BenchmarkImage),
                rows(api, Capture, Capture.lineage == lineage, Capture.dataset_id.is_(None),
                     Capture.benchmark.is_(False), Capture.state == "labelled"))

    before = state()
    assert before[-1] == 3
    # bad values: one 422 naming each (the schema's, then the spec's)
    r = api.post(f"/v1/adapters/{ref}/retrain", json={
        "hyperparameters": {"epochs": 0, "lr": -1, "val_fraction": 0.9}, "alias": "Prod"})
    assert r.status_code == 422, r.text
    problems = " | ".join(r.json()["problems"])
    for name in ("epochs must be >= 1", "lr must be > 0", "val_fraction must be <= 0.5",
                 "alias: 'Prod' is not an alias"):
        assert name in problems, (name, problems)
    r = api.post(f"/v1/adapters/{ref}/retrain", json={
        "promote": "sometimes", "hyperparameters": {"template": "x {}", "epochs": "many"}})
    assert r.status_code == 422, r.text
    problems = " | ".join(r.json()["problems"])
    for name in ("promote", "template", "epochs"):
        assert name in problems, (name, problems)
    r = api.post(f"/v1/adapters/{ref}/retrain", json={"hyperparameters": {"epochs": 10**4}})
    assert r.status_code == 422 and "exceeds the limit" in r.text
    assert state() == before

    # another tenant's adapter, a deleted one, an unnamed one, an imported one
    other = {"Authorization": f"Bearer {new_key(api, ['admin'], tenant='retrain-other')}"}
    for reference in (ref, adapter["id"]):
        r = api.post(f"/v1/adapters/{reference}/retrain", headers=other)
        assert r.status_code == 404, r.text
    assert api.post(f"/v1/adapters/{gone['id']}/retrain").status_code == 404
    r = api.post(f"/v1/adapters/{unnamed['id']}/retrain")
    assert r.status_code == 409
    assert "has no name" in r.json()["message"] and "POST /v1/jobs with name=" in \
        r.json()["message"]
    r = api.post(f"/v1/adapters/{imported['id']}/retrain")
    assert r.status_code == 409 and "was imported" in r.json()["message"]
    assert state() == before

    # the quotas of POST /v1/jobs (a job in flight counts as the adapter it will make)
    settings = api.app.state.context.settings
    with api.app.state.context.sessions() as s:
        tenant = tenant_of(api)
        stored = crud.count_active_jobs(s, tenant_id=tenant) + crud.count_adapters(
            s, tenant_id=tenant)
    monkeypatch.setattr(settings, "max_adapters", stored)
    r = api.post(f"/v1/adapters/{ref}/retrain")
    assert r.status_code == 429 and "stored adapters" in r.text
    monkeypatch.undo()
    assert state() == before

    r = api.post(f"/v1/adapters/{ref}/retrain")  # and with nothing wrong, it starts
    assert r.status_code == 202, r.text
    assert r.json()["retrain"]["added"] == 3 and state() != before
    cancel_queued(api, lineage)


def test_retrain_after_fires_once_when_reached(api, tiny, colour_set):
    unnamed = stored_parent(api, tiny, colour_set, None)
    r = api.put(f"/v1/adapters/{unnamed['id']}/capture", json={
        "sample_rate": 1.0, "retrain_after": 0, "promote": "sometimes"})
    assert r.status_code == 422, r.text
    problems = " | ".join(r.json()["problems"])
    for name in ("retrain_after: must be between 1", "retrain_after: this adapter has no name",
                 "promote: must be manual or auto"):
        assert name in problems, (name, problems)

    lineage = f"auto-{uuid.uuid4().hex[:8]}"
    stored_parent(api, tiny, colour_set, lineage)
    ref = f"{lineage}@1"
    setting = capture_on(api, ref, retrain_after=3, promote="auto")
    assert (setting["retrain_after"], setting["promote"]) == (3, "auto")
    caps = captured(api, ref, 200, 8)
    tenant = tenant_of(api)

    def retrains() -> list[Job]:
        with api.app.state.context.sessions() as s:
            return crud.retrain_jobs(s, tenant_id=tenant, lineage=lineage)

    label(api, ref, caps[0]["id"], "red")
    label(api, ref, caps[1]["id"], "green")
    assert retrains() == []
    third = label(api, ref, caps[2]["id"], "blue")  # the third waiting label: it starts
    [first] = retrains()
    assert first.status == "queued" and first.parent_adapter_id is not None
    assert (first.retrain["trigger"], first.retrain["promote"], first.retrain["added"]) == \
        ("labels", "auto", 3)
    assert third["dataset_id"] == first.dataset_id  # taken in the label's transaction
    # three more wait, but a version of the name is being trained: no second retrain
    r = api.post(f"/v1/adapters/{ref}/captures:label", json={"items": [
        {"id": c["id"], "label": "red"} for c in caps[3:6]]})
    assert r.status_code == 200, r.text
    assert [j.id for j in retrains()] == [first.id]
    # a taken capture's label cannot change any more
    r = api.post(f"/v1/adapters/{ref}/captures/{caps[0]['id']}", json={"label": "green"})
    assert r.status_code == 422 and "can no longer change" in r.text

    # once it has ended (cancelled here), the next label starts the next one, which builds
    # on the cancelled one's dataset version: its captures are not lost
    assert api.post(f"/v1/jobs/{first.id}/cancel").json()["status"] == "cancelled"
    label(api, ref, caps[6]["id"], "yellow")
    first, second = retrains()
    assert second.retrain["continues"] == first.id
    assert (second.retrain["added"], second.retrain["benchmarked"]) == (3, 1)  # the 5th
    version = api.get(f"/v1/datasets/{second.dataset_id}").json()
    assert version["parent_id"] == first.dataset_id and version["images"] == 64 + 3 + 3
    cancel_queued(api, lineage)


def test_waiting_captures_survive_the_sweep(api, tiny, colour_set, db_session):
    lineage = f"kept-{uuid.uuid4().hex[:8]}"
    stored_parent(api, tiny, colour_set, lineage)
    ref = f"{lineage}@1"
    capture_on(api, ref, retention_days=1)
    caps = captured(api, ref, 300, 7)
    for capture in caps[:5]:
        label(api, ref, capture["id"], "red")
    assert api.post(f"/v1/adapters/{ref}/retrain").status_code == 202  # 4 added, the 5th set aside
    cancel_queued(api, lineage)
    waiting = label(api, ref, caps[5]["id"], "green")
    assert waiting["dataset_id"] is None and not waiting["benchmark"]
    # caps[6] stays pending

    swept = api.app.state.context.captures.sweep(now=utcnow() + timedelta(days=2))
    assert swept >= 6
    left = api.get(f"/v1/adapters/{ref}/captures", params={"limit": 200}).json()["data"]
    assert [c["id"] for c in left] == [caps[5]["id"]]  # listed past its expiry, labellable
    assert label(api, ref, caps[5]["id"], "blue")["label"] == "blue"
    digests = {c["id"]: c["sha256"] for c in caps}
    collect_released(api)  # the collector, its grace period past
    kept = set(db_session.scalars(select(Blob.sha256).where(Blob.sha256.in_(digests.values()))))
    # the dataset version keeps the added images, the benchmark set the fifth
    assert kept == {digests[c["id"]] for c in caps[:6]}


def test_dataset_versions(api, colour_set):
    files, labels = image_files(colour_set)
    first = api.post("/v1/datasets", files=files[:4] + files[16:20],
                     data={"labels": labels[:4] + labels[16:20]})
    assert first.status_code == 201, first.text
    first = first.json()
    assert (first["version"], first["parent_id"], first["children"]) == (1, None, [])
    r = api.post(f"/v1/datasets/{first['id']}/images", files=files[40:42],
                 data={"labels": ["teal", "teal"]})
    assert r.status_code == 200, r.text
    second = r.json()
    assert second["id"] != first["id"]
    assert (second["version"], second["parent_id"], second["images"]) == (2, first["id"], 10)
    assert second["classnames"] == first["classnames"] + ["teal"]
    again = api.get(f"/v1/datasets/{first['id']}").json()
    assert again | {"children": []} == first and again["children"] == [second["id"]]
    r = api.delete(f"/v1/datasets/{first['id']}")
    assert r.status_code == 409 and second["id"] in r.json()["message"]
    assert api.delete(f"/v1/datasets/{second['id']}").status_code == 204
    assert api.get(f"/v1/datasets/{first['id']}").json()["children"] == []
    assert api.delete(f"/v1/datasets/{first['id']}").status_code == 204


def test_promotion_rule_moves_only_what_it_should(api, tiny, colour_set):
    """worker.promotion.settle on stored versions (no training): auto moves the asked alias,
    or every alias at the previous version; manual and worse-beyond-the-interval move
    nothing; each decision is a job event and an adapter.version_ready delivery."""
    from registry.models import WebhookDelivery
    from worker import promotion

    lineage = f"promo-{uuid.uuid4().hex[:8]}"
    v1 = stored_parent(api, tiny, colour_set, lineage)
    for alias in ("prod", "canary"):
        r = api.put(f"/v1/aliases/{alias}", json={"name": lineage, "version": 1})
        assert r.status_code == 200, r.text
    other = stored_parent(api, tiny, colour_set, f"{lineage}-x")  # another name: never moved
    assert api.put("/v1/aliases/prod", json={"name": f"{lineage}-x", "version": 1}
                   ).status_code == 200
    with api.app.state.context.sessions() as s:
        tenant = crud.get_tenant_by_name(s, name="default").id
        hook = crud.create_webhook(s, tenant_id=tenant, url="https://hooks.example.com/x",
                                   events=["adapter.version_ready"])
        s.commit()
        hook_id = hook.id
    capture_on(api, f"{lineage}@1")

    def version(promote: str, alias: str | None, not_worse: bool | None) -> dict:
        for capture in captured(api, f"{lineage}@1", 300 + rows(api, Job), 1):
            label(api, f"{lineage}@1", capture["id"], "red")
        r = api.post(f"/v1/adapters/{lineage}@1/retrain", json={
            "promote": promote, **({"alias": alias} if alias else {})})
        assert r.status_code == 202, r.text
        with api.app.state.context.sessions() as s:
            job = crud.get_job(s, job_id=r.json()["id"])
            delta = read_delta_zip(_delta_zip(tiny, 6, list(job.dataset.classnames)))
            adapter = crud.store_adapter(s, job=job, weights=delta.to_bytes(),
                                         config=delta.config_dict(), metrics={}, name=lineage)
            promotion.settle(s, job, adapter, {
                "previous_adapter_id": v1["id"], "images": 20, "not_worse": not_worse,
                "vs_previous": {"difference": 0.0 if not_worse else -0.3,
                                "low": -0.1 if not_worse else -0.5,
                                "high": 0.1 if not_worse else -0.1}})
            s.commit()
            return {"id": adapter.id, "job": job.id}

    def aliases() -> dict:
        return {a["alias"]: a["adapter_id"] for a in
                api.get("/v1/aliases", params={"name": lineage}).json()["data"]}

    manual = version("manual", None, True)
    assert aliases() == {"prod": v1["id"], "canary": v1["id"]}
    worse = version("auto", None, False)
    assert aliases() == {"prod": v1["id"], "canary": v1["id"]}
    asked = version("auto", "canary", True)  # only the asked alias
    assert aliases() == {"prod": v1["id"], "canary": asked["id"]}
    every = version("auto", None, True)  # every alias still at v1: prod only now
    assert aliases() == {"prod": every["id"], "canary": asked["id"]}
    other_prod = api.get("/v1/aliases", params={"name": f"{lineage}-x"}).json()["data"]
    assert [a["adapter_id"] for a in other_prod] == [other["id"]]

    decisions = {}
    for made in (manual, worse, asked, every):
        events = api.get(f"/v1/jobs/{made['job']}/events").json()["data"]
        [payload] = [e["payload"] for e in events if e["kind"] == "compared"]
        decisions[made["id"]] = (payload["decision"].split(":")[0], payload["moved_aliases"])
        stored = api.get(f"/v1/adapters/{made['id']}").json()["metrics"]["comparison"]
        assert stored["promotion"]["moved_aliases"] == payload["moved_aliases"]
    assert list(decisions.values()) == [("manual", []), ("not promoted", []),
                                        ("promoted", ["canary"]), ("promoted", ["prod"])]
    with api.app.state.context.sessions() as s:
        payloads = [d.payload["data"] for d in s.scalars(select(WebhookDelivery).where(
            WebhookDelivery.event_type == "adapter.version_ready"))
            if d.payload["data"]["name"] == lineage]
    assert sorted(p["adapter_id"] for p in payloads) == sorted(decisions)
    assert all(p["vs_previous"] and "promotion" in p for p in payloads)
    with api.app.state.context.sessions() as s:  # no delivery left due for later tests' senders
        crud.delete_webhook(s, webhook_id=hook_id, tenant_id=tenant)
        s.commit()
