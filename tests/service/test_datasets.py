"""Datasets you can reuse (PostgreSQL + a real Celery worker): upload once, train on it by
``dataset_id``, add images (a new version; the dataset itself never changes), delete only
when no job used it."""

from __future__ import annotations

from clipfit_core.synthetic import write_dataset
from registry.models import Blob, Dataset, Job

from .conftest import FINISHED, image_files, new_key, wait_for, zip_folder
from .test_jobs import count


def test_a_stored_dataset_trains_jobs_grows_and_is_kept_while_used(api, start_worker,
                                                                   colour_set, tmp_path):
    r = api.post("/v1/datasets", files={"dataset": ("c.zip", zip_folder(colour_set))})
    assert r.status_code == 201, r.text
    dataset = r.json()
    assert dataset["classnames"] == ["blue", "green", "red", "yellow"]
    assert dataset["counts"] == {"blue": 16, "green": 16, "red": 16, "yellow": 16}
    assert dataset["images"] == 64 and dataset["jobs"] == 0
    assert dataset["id"] in [d["id"] for d in api.get("/v1/datasets").json()["data"]]

    jobs_before, datasets_before = count(api, Job), count(api, Dataset)
    r = api.post("/v1/jobs", data={"dataset_id": dataset["id"], "base_model": "clipfit-tiny",
                                   "epochs": "3", "val_fraction": "0.25"})
    assert r.status_code == 202, r.text
    assert count(api, Dataset) == datasets_before  # no copy: the job uses the stored one
    job = r.json()
    # while the job waits, images added make a new version: the job's dataset stays as it is
    files, labels = image_files(colour_set)
    r = api.post(f"/v1/datasets/{dataset['id']}/images", files=files[:2],
                 data={"labels": labels[:2]})
    assert r.status_code == 200, r.text
    assert (r.json()["parent_id"], r.json()["version"], r.json()["images"]) == \
        (dataset["id"], 2, 66)
    assert api.get(f"/v1/datasets/{dataset['id']}").json()["images"] == 64
    assert api.delete(f"/v1/datasets/{r.json()['id']}").status_code == 204
    start_worker()
    job = wait_for(api, job["id"], lambda j: j["status"] in FINISHED)
    assert job["status"] == "succeeded", job
    adapter = api.get(f"/v1/adapters/{job['adapter_id']}").json()
    assert adapter["classnames"] == dataset["classnames"]
    assert adapter["hyperparameters"]["train_images"] == 48  # 12 of each class after the split
    assert count(api, Job) == jobs_before + 1

    # then it grows, with a new class too
    more = write_dataset(tmp_path / "more", ["purple"], per_class=3, seed=9)
    images = [("images", (p.name, p.read_bytes(), "image/png"))
              for p in sorted((more / "purple").iterdir())]
    r = api.post(f"/v1/datasets/{dataset['id']}/images", files=images,
                 data={"labels": ["purple"] * 3})
    assert r.status_code == 200, r.text
    grown = r.json()
    assert grown["classnames"] == ["blue", "green", "red", "yellow", "purple"]
    assert grown["counts"]["purple"] == 3 and grown["images"] == 67 and grown["jobs"] == 0
    assert (grown["parent_id"], grown["version"]) == (dataset["id"], 2)
    assert api.get(f"/v1/datasets/{dataset['id']}").json()["children"] == [grown["id"]]

    # a dataset a job used is kept; an unused one goes, with its blobs
    r = api.delete(f"/v1/datasets/{dataset['id']}")
    assert r.status_code == 409 and "1 job(s)" in r.text
    blobs = count(api, Blob)
    unused = api.post("/v1/datasets", files=images, data={"labels": ["purple", "purple",
                                                                     "violet"]}).json()
    assert api.delete(f"/v1/datasets/{unused['id']}").status_code == 204
    assert count(api, Blob) == blobs  # its images were the same bytes: shared, kept
    assert api.get(f"/v1/datasets/{unused['id']}").status_code == 404


def test_dataset_refusals(api, colour_set):
    before = count(api, Dataset)
    files, labels = image_files(colour_set)
    r = api.post("/v1/datasets", files=files[:3], data={"labels": labels[:2]})
    assert r.status_code == 422 and "3 images but 2 labels" in r.text
    r = api.post("/v1/datasets", files=[("images", ("x.png", b"not an image", "image/png")),
                                        ("images", ("y.png", b"nor this", "image/png"))],
                 data={"labels": ["a", "b"]})
    assert r.status_code == 422 and "x.png" in r.text and "y.png" in r.text
    assert count(api, Dataset) == before
    dataset = api.post("/v1/datasets", files=files, data={"labels": labels}).json()
    for data, words in [
        ({"dataset_id": "nope"}, "no such dataset"),
        ({"dataset_id": dataset["id"], "labels": ["red"]}, "send no images"),
    ]:
        r = api.post("/v1/jobs", data=data)
        assert r.status_code == 422 and words in r.text, r.text
    stranger = {"Authorization": f"Bearer {new_key(api, ['admin'], tenant='elsewhere')}"}
    assert api.get(f"/v1/datasets/{dataset['id']}", headers=stranger).status_code == 404
    r = api.post("/v1/jobs", data={"dataset_id": dataset["id"]}, headers=stranger)
    assert r.status_code == 422 and "no such dataset" in r.text
    assert api.delete(f"/v1/datasets/{dataset['id']}").status_code == 204
