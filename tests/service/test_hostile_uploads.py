"""Hostile uploads found by an outside attack run: zip bombs, zips of too many classes,
images over the byte limit, unsafe entry names, and imported deltas holding NaN, infinity
or integer tensors. Each answers 422 naming the member, file, key or tensor, and stores
nothing. (What a bomb costs in memory is measured by ``python -m bench.hostile_zips``.)"""

from __future__ import annotations

import base64
import io
import json
import random
import zipfile

import pytest
import torch
from safetensors.torch import save

from bench.hostile_zips import BOMB, bomb_zip
from clipfit_core.delta import CONFIG_NAME, WEIGHTS_NAME, Delta, DeltaConfig, extract_delta

from .test_bad_input import check_refusal, counts, make_zip, png

TRAIN = {"base_model": "clipfit-tiny", "epochs": "2"}
NOT_FINITE = "is not a finite number (NaN, infinity, or too large for a float)"


def problems_of(r) -> list[str]:
    assert r.status_code == 422, r.text[:500]
    return r.json()["problems"]


def noise_png(side: int = 48) -> bytes:
    """A PNG of a few KB (noise does not compress)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.frombytes("RGB", (side, side), random.Random(0).randbytes(side * side * 3)
                    ).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("route, form", [("/v1/datasets", {}), ("/v1/jobs", TRAIN)])
def test_a_zip_bomb_is_refused_naming_its_member(api, route, form):
    before = counts(api)
    limit = api.app.state.settings.max_image_bytes
    bombs = [  # 30 MB of zeros, over the default limit of 20 MB
        (bomb_zip(30), f"{BOMB!r}: {30 << 20} bytes uncompressed, the limit is {limit}"),
        (bomb_zip(30, declared=1024), (f"{BOMB!r}: cannot be read from the archive (inflates "
                                      "past the 1024 bytes its directory entry declares)")),
        (bomb_zip(30, declared=limit),
         f"{BOMB!r}: more than {limit} bytes uncompressed, the limit is {limit}"),
        (bomb_zip(30, zipfile.ZIP_BZIP2, declared=1024), (f"{BOMB!r}: cannot be read from the "
         "archive (inflates past the 1024 bytes its directory entry declares)")),
    ]
    for data, problem in bombs:
        r = api.post(route, files={"dataset": ("bomb.zip", data, "application/zip")},
                     data=form)
        assert problems_of(r) == [problem]
    assert counts(api) == before


def test_too_many_classes_in_a_zip_are_refused_before_any_image_is_read(api):
    # 2,000 folders of one unreadable "image": reading any would add a problem naming it
    data = make_zip({f"class{i:04d}/1.png": b"x" for i in range(2000)})
    before = counts(api)
    for route, form in (("/v1/datasets", {}), ("/v1/jobs", TRAIN)):
        r = api.post(route, files={"dataset": ("many.zip", data, "application/zip")},
                     data=form)
        assert problems_of(r) == ["2000 classes, the limit is 1000"]
    assert counts(api) == before


def test_images_over_the_byte_limit_are_refused_by_name(api, monkeypatch):
    monkeypatch.setattr(api.app.state.settings, "max_image_bytes", 1000)
    big, small = noise_png(), png()
    assert len(big) > 1000 > len(small)
    before = counts(api)
    files = [("images", ("big.png", big, "image/png")), ("images", ("a.png", small, "image/png")),
             ("images", ("b.png", png((0, 0, 200)), "image/png"))]
    labels = {"labels": ["cat", "cat", "dog"]}
    over = "big.png: larger than the limit of 1000 bytes per image"
    for route, form in (("/v1/datasets", {}), ("/v1/jobs", TRAIN)):
        assert problems_of(api.post(route, files=files, data=form | labels)) == [over]
        zipped = make_zip({"cat/big.png": big, "cat/a.png": small, "dog/b.png": small})
        r = api.post(route, files={"dataset": ("d.zip", zipped, "application/zip")}, data=form)
        assert problems_of(r) == [(f"'cat/big.png': {len(big)} bytes uncompressed, the limit "
                                  "is 1000")]
    zero_shot = {"base_model": "clipfit-tiny", "classes": "cat,dog"}
    r = api.post("/v1/classify", files=files[:2], data=zero_shot)
    assert problems_of(r) == [over]
    r = api.post("/v1/classify", json={**zero_shot, "classes": ["cat", "dog"], "images": [
        base64.b64encode(small).decode(), base64.b64encode(big).decode()]})
    assert problems_of(r) == ["images[1]: larger than the limit of 1000 bytes per image"]
    assert counts(api) == before


def test_unsafe_entry_names_in_a_dataset_zip_are_refused(api):
    before = counts(api)
    for name in ("..\\..\\cat/1.png", "C:/cat/1.png", "/cat/1.png"):
        data = make_zip({name: png(), "dog/1.png": png((0, 0, 200))})
        r = api.post("/v1/datasets", files={"dataset": ("d.zip", data, "application/zip")})
        check_refusal(r, "unsafe paths", name)
        assert problems_of(r) == [f"dataset: unsafe paths: {name!r}"]
    assert counts(api) == before


def _delta_zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


def test_imported_deltas_with_non_finite_values_or_unsafe_names_are_refused(api, tiny):
    tensors = {k: v + 0.1 for k, v in extract_delta(tiny.model).items()}
    delta = Delta(tensors, DeltaConfig(
        base_model="clipfit-tiny", base_fingerprint=tiny.fingerprint, classnames=["cat", "dog"],
        templates=["a photo of a {}."], metrics={"val_accuracy": 0.5}))
    config = delta.config_dict()
    good = {CONFIG_NAME: json.dumps(config).encode(), WEIGHTS_NAME: delta.to_bytes()}
    first = min(tensors)
    nan = torch.full_like(tensors[first], float("nan"))
    cases = [
        ({WEIGHTS_NAME: save(tensors | {first: nan})},
         [f"tensor {first!r} holds {nan.numel()} NaN or infinite values"]),
        ({WEIGHTS_NAME: save(tensors | {first: tensors[first].to(torch.int64)})},
         [f"tensor {first!r} is int64, not floating point"]),
        ({CONFIG_NAME: json.dumps(config | {"metrics": {"val_accuracy": "HUGE"}, "hyperparameters": {
            "lr": float("nan")}}).replace('"HUGE"', "1e999").encode()},
         [f"'hyperparameters.lr' {NOT_FINITE}", f"'metrics.val_accuracy' {NOT_FINITE}"]),
        ({CONFIG_NAME: None, "../adapter_config.json": good[CONFIG_NAME]},
         ["entry '../adapter_config.json' has an unsafe name (an absolute path or '..')"]),
        ({WEIGHTS_NAME: None, "/tmp/adapter_model.safetensors": good[WEIGHTS_NAME]},
         [("entry '/tmp/adapter_model.safetensors' has an unsafe name (an absolute path or "
          "'..')")]),
    ]
    before = counts(api)
    for changes, problems in cases:
        files = {k: v for k, v in (good | changes).items() if v is not None}
        r = api.post("/v1/adapters", files={"file": ("d.zip", _delta_zip(files))})
        assert problems_of(r) == problems, changes.keys()
    assert counts(api) == before
    r = api.post("/v1/adapters", files={"file": ("d.zip", _delta_zip(good))})
    assert r.status_code == 201, r.text[:500]  # the same delta, untouched, imports
    assert api.delete(f"/v1/adapters/{r.json()['id']}").status_code == 204
