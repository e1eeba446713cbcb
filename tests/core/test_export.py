"""Exports (open_clip merged checkpoint) and the reader of uploaded delta zips."""

from __future__ import annotations

import io
import json
import zipfile

import open_clip
import pytest
import torch

from clipfit_core.classify import Classifier
from clipfit_core.delta import CONFIG_NAME, WEIGHTS_NAME, Delta, DeltaConfig, DeltaError, applied
from clipfit_core.export import (
    CLASSES_NAME,
    OPEN_CLIP_WEIGHTS,
    read_delta_zip,
    write_open_clip,
)
from clipfit_core.params import trainable_parameters
from clipfit_core.serving import MixedAdapterModel


def _delta(base, seed: int = 0) -> Delta:
    """A delta whose every tensor differs from the base's (as a trained one does)."""
    g = torch.Generator().manual_seed(seed)
    tensors = {n: p.detach().cpu() + 0.05 * torch.randn(p.shape, generator=g)
               for n, p in trainable_parameters(base.model).items()}
    return Delta(tensors, DeltaConfig(
        base_model=base.spec, base_fingerprint=base.fingerprint,
        classnames=["red", "green", "blue"], templates=["a photo of a {}."], arch=base.arch))


def _features(model, pixels, tokens):
    with torch.no_grad():
        return model.encode_image(pixels), model.encode_text(tokens)


def test_the_open_clip_export_loads_with_open_clip_and_gives_the_same_outputs(tiny, tmp_path,
                                                                           colour_test):
    delta = _delta(tiny)
    write_open_clip(tiny, delta, tmp_path)
    info = json.loads((tmp_path / CLASSES_NAME).read_text())
    model, _, _ = open_clip.create_model_and_transforms(
        info["arch"], pretrained=str(tmp_path / OPEN_CLIP_WEIGHTS))
    model.eval().requires_grad_(False)
    images = [p for p in sorted(colour_test.rglob("*.png"))[:6]]
    classifier = Classifier(tiny)
    pixels = tiny.preprocess([classifier_image(p) for p in images])
    tokens = open_clip.get_tokenizer(info["arch"])(["a photo of a red.", "a cat"])
    with applied(tiny, delta):
        expected = _features(tiny.model, pixels, tokens)
        service = classifier.logits(images, info["classnames"], info["templates"], None)
    for got, want in zip(_features(model, pixels, tokens), expected):
        assert torch.equal(got, want)
    # the classifier's logits, recomputed from the exported model alone
    text = torch.nn.functional.normalize(model.encode_text(
        open_clip.get_tokenizer(info["arch"])([f"a photo of a {c}." for c in info["classnames"]])),
        dim=-1)
    img = torch.nn.functional.normalize(model.encode_image(pixels), dim=-1)
    logits = model.logit_scale.exp() * img @ text.T
    torch.testing.assert_close(logits, service, rtol=1e-5, atol=1e-5)
    # and the base's own weights were not written: the export differs from the base
    assert not torch.equal(_features(tiny.model, pixels, tokens)[0], expected[0])


def classifier_image(path):
    from clipfit_core.data import open_image
    return open_image(path)


def test_a_serving_model_exports_the_same_file(tmp_path):
    """The API exports from the model it serves with (LayerNorms read from a table)."""
    from clipfit_core.models import create_base_model

    plain, served = create_base_model("clipfit-tiny"), create_base_model("clipfit-tiny")
    MixedAdapterModel(served)
    delta = _delta(plain, seed=1)
    write_open_clip(plain, delta, tmp_path / "a")
    write_open_clip(served, delta, tmp_path / "b")
    assert (tmp_path / "a" / OPEN_CLIP_WEIGHTS).read_bytes() == \
        (tmp_path / "b" / OPEN_CLIP_WEIGHTS).read_bytes()


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


def test_read_delta_zip_round_trip_and_refusals(tiny, tmp_path):
    delta = _delta(tiny)
    good = {CONFIG_NAME: json.dumps(delta.config_dict()).encode(), WEIGHTS_NAME: delta.to_bytes()}
    back = read_delta_zip(_zip(good))
    assert back.id == delta.id and back.config.classnames == delta.config.classnames
    for files, words in [
        ({CONFIG_NAME: good[CONFIG_NAME]}, "no adapter_model.safetensors"),
        ({**good, "evil.py": b"x"}, "unexpected files"),
        ({**good, CONFIG_NAME: b"[1, 2]"}, "not a JSON object"),
        ({**good, CONFIG_NAME: json.dumps({**delta.config_dict(), "method": "lora"}).encode()},
         "method must be 'clipfit'"),
        ({**good, WEIGHTS_NAME: b"\x00" * 64}, "cannot be read"),
    ]:
        with pytest.raises(DeltaError, match=words):
            read_delta_zip(_zip(files))
    with pytest.raises(DeltaError, match="not a zip"):
        read_delta_zip(b"plain bytes")


def test_read_delta_zip_checks_the_whole_config_and_names_every_problem(tiny):
    delta = _delta(tiny)
    config = delta.config_dict()
    weights = delta.to_bytes()
    ok = read_delta_zip(_zip({CONFIG_NAME: json.dumps(config).encode(), WEIGHTS_NAME: weights}),
                        allowed_base_models=[tiny.spec], max_classes=3)
    assert ok.id == delta.id
    bad = config | {"classnames": ["red", "red"], "metrics": {"a": {"b": {"c": {"d": 1}}}}}
    with pytest.raises(DeltaError) as e:
        read_delta_zip(_zip({CONFIG_NAME: json.dumps(bad).encode(), WEIGHTS_NAME: weights}),
                       allowed_base_models=["ViT-B-16:openai"])
    assert e.value.problems == [
        "duplicate class names: 'red'",
        "metrics must be a JSON object of at most 3 levels and 64 KB",
        f"base_model {tiny.spec!r} is not allowed here; allowed: ['ViT-B-16:openai']"]
    assert str(e.value) == "; ".join(e.value.problems)
    with pytest.raises(DeltaError, match="3 classes, the limit is 2"):
        read_delta_zip(_zip({CONFIG_NAME: json.dumps(config).encode(), WEIGHTS_NAME: weights}),
                       max_classes=2)


def _declaring(data: bytes, name: str, size: int) -> bytes:
    """The zip with ``name``'s uncompressed size, in its local and central headers, set to
    ``size`` (a directory that lies)."""
    raw, encoded = bytearray(data), name.encode()
    for signature, size_at, name_at in ((b"PK\x03\x04", 22, 30), (b"PK\x01\x02", 24, 46)):
        start = 0
        while (i := raw.find(signature, start)) >= 0:
            if raw[i + name_at:i + name_at + len(encoded)] == encoded:
                raw[i + size_at:i + size_at + 4] = size.to_bytes(4, "little")
            start = i + 4
    return bytes(raw)


def test_read_delta_zip_refuses_bad_tensors_non_finite_numbers_and_unsafe_names(tiny):
    from safetensors.torch import save

    delta = _delta(tiny)
    config = delta.config_dict()
    tensors = {k: v.float().contiguous() for k, v in delta.tensors.items()}
    first, second = sorted(tensors)[:2]
    good = {CONFIG_NAME: json.dumps(config).encode(), WEIGHTS_NAME: save(tensors)}
    nan = torch.full_like(tensors[first], float("nan"))
    inf = tensors[second].clone()
    inf.view(-1)[0] = float("inf")
    cases = [  # the tensors: floating point and finite, each named
        ({WEIGHTS_NAME: save(tensors | {first: nan, second: inf})},
         [f"tensor {first!r} holds {nan.numel()} NaN or infinite values",
          f"tensor {second!r} holds 1 NaN or infinite values"]),
        ({WEIGHTS_NAME: save(tensors | {first: tensors[first].to(torch.int64)})},
         [f"tensor {first!r} is int64, not floating point"]),
    ]
    # the config: no NaN or infinity anywhere, each named by its path
    n = len(config["classnames"])
    part = {"per_class": [{"precision": 0.5, "recall": 0.5}] * n,
            "confusion_matrix": [[1] * n for _ in range(n)]}
    report = {"classnames": config["classnames"], "zero_shot": part,
              "tuned": part | {"per_class": [{"precision": "HUGE"}] + part["per_class"][1:]}}
    text = json.dumps(config | {"metrics": {"loss": float("nan"), "acc": 0.5},
                                "hyperparameters": {"lr": "HUGE", "x": [1, float("-inf")]},
                                "evaluation": report}).replace('"HUGE"', "1e999")
    assert "NaN" in text and "-Infinity" in text and "1e999" in text
    cases.append(({CONFIG_NAME: text.encode()}, [
        f"{path!r} is not a finite number (NaN, infinity, or too large for a float)"
        for path in ("hyperparameters.lr", "hyperparameters.x[1]", "metrics.loss",
                     "evaluation.tuned.per_class[0].precision")]))
    # entry names: absolute, '..', backslashes, drive letters
    for unsafe in ("../adapter_config.json", "/tmp/adapter_config.json",
                   "..\\adapter_config.json", "C:/adapter_config.json"):
        cases.append(({CONFIG_NAME: None, unsafe: good[CONFIG_NAME]},
                      [f"entry {unsafe!r} has an unsafe name (an absolute path or '..')"]))
    for changes, problems in cases:
        files = {k: v for k, v in (good | changes).items() if v is not None}
        with pytest.raises(DeltaError) as e:
            read_delta_zip(_zip(files))
        assert e.value.problems == problems, changes.keys()
    # a member inflating past what the zip's directory declares: refused as it inflates
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(CONFIG_NAME, good[CONFIG_NAME])
        z.writestr(WEIGHTS_NAME, bytes(4 << 20))
    with pytest.raises(DeltaError, match=f"{WEIGHTS_NAME} cannot be read from the zip "
                                         r"\(inflates past the 1024 bytes"):
        read_delta_zip(_declaring(buf.getvalue(), WEIGHTS_NAME, 1024))
