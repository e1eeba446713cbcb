"""The same images give the same delta, bit for bit, whether they arrive as a folder on the
command line, a zip upload or multipart files (in any order) through the service."""

from __future__ import annotations

import io
import random
import subprocess
import sys
import zipfile

from safetensors.torch import load

from clipfit_core.delta import WEIGHTS_NAME

from .conftest import FINISHED, image_files, wait_for, zip_folder

HYPERPARAMETERS = {"epochs": "3", "lr": "0.05", "batch_size": "8", "shots": "10",
                   "val_fraction": "0.25", "seed": "7", "crop_min": "0.5"}


def test_folder_zip_and_multipart_train_the_same_delta(api, start_worker, colour_set,
                                                       tmp_path):
    out = tmp_path / "cli-delta"
    flags = [a for k, v in HYPERPARAMETERS.items() for a in (f"--{k.replace('_', '-')}", v)]
    subprocess.run([sys.executable, "-m", "clipfit", "train", str(colour_set), "--model",
                    "clipfit-tiny", "--device", "cpu", "--out", str(out), "--quiet", *flags],
                   check=True, capture_output=True)
    cli_weights = (out / WEIGHTS_NAME).read_bytes()

    files, labels = image_files(colour_set)
    shuffled = list(zip(files, labels))
    random.Random(1).shuffle(shuffled)  # arrival order must not matter
    form = {**HYPERPARAMETERS, "base_model": "clipfit-tiny"}
    zip_job = api.post("/v1/jobs", files={"dataset": ("set.zip", zip_folder(colour_set))},
                       data=form).json()
    multipart_job = api.post("/v1/jobs", files=[f for f, _ in shuffled],
                             data={**form, "labels": [label for _, label in shuffled]}).json()
    start_worker()
    deltas = []
    for job in (zip_job, multipart_job):
        job = wait_for(api, job["id"], lambda j: j["status"] in FINISHED, timeout=180)
        assert job["status"] == "succeeded", job
        adapter = api.get(f"/v1/adapters/{job['adapter_id']}").json()
        assert adapter["classnames"] == ["blue", "green", "red", "yellow"]
        zipped = api.get(f"/v1/adapters/{job['adapter_id']}/download").content
        deltas.append(zipfile.ZipFile(io.BytesIO(zipped)).read(WEIGHTS_NAME))
    # the header's metadata order is not stable across processes (safetensors keeps it in
    # a hash map), so compare the tensors' bytes, name by name
    expected = tensor_bytes(cli_weights)
    assert tensor_bytes(deltas[0]) == expected and tensor_bytes(deltas[1]) == expected


def tensor_bytes(weights: bytes) -> dict[str, bytes]:
    return {name: t.numpy().tobytes() for name, t in load(weights).items()}
