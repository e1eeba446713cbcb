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
