import json

import pytest
import torch

from clipfit_core.delta import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    Delta,
    DeltaConfig,
    DeltaError,
    apply_delta,
    extract_delta,
    restore,
)
from clipfit_core.models import create_base_model


def make_delta(base, shift=0.25):
    tensors = {k: v + shift for k, v in extract_delta(base.model).items()}
    return Delta(tensors, DeltaConfig(base_model=base.spec, base_fingerprint=base.fingerprint,
                                      classnames=["a", "b"], templates=["a photo of a {}."],
                                      metrics={"accuracy": 0.5}))


def test_save_writes_exactly_two_files_and_round_trips(tiny, tmp_path):
    delta = make_delta(tiny)
    delta.save(tmp_path / "d")
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    loaded = Delta.load(tmp_path / "d")
    assert set(loaded.tensors) == set(delta.tensors)
    assert all(torch.equal(loaded.tensors[k], delta.tensors[k]) for k in delta.tensors)
    assert loaded.config.classnames == ["a", "b"] and loaded.config.metrics == {"accuracy": 0.5}
    assert loaded.config.trainable_count == delta.numel() and loaded.id == delta.id
    raw = (tmp_path / "d" / WEIGHTS_NAME).read_bytes()
    assert Delta.from_bytes(raw, loaded.config.to_dict()).id == delta.id
    again = Delta.from_bytes(delta.to_bytes(), delta.config_dict())
    assert again.id == delta.id and again.config.classnames == ["a", "b"]


def test_apply_then_restore_is_bit_identical(tiny):
    before = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    delta = make_delta(tiny)
    originals = apply_delta(tiny, delta)
    assert torch.equal(tiny.model.visual.ln_pre.bias, delta.tensors["visual.ln_pre.bias"])
    restore(tiny, originals)
    after = tiny.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_fingerprint_mismatch_is_refused(tiny):
    delta = make_delta(tiny)
    delta.config.base_fingerprint = "0" * 64
    with pytest.raises(DeltaError, match="fingerprint"):
        apply_delta(tiny, delta)


def test_wrong_tensor_set_is_refused(tiny):
    delta = make_delta(tiny)
    delta.tensors.pop("visual.ln_post.bias")
    with pytest.raises(DeltaError, match="missing"):
        apply_delta(tiny, delta)


def test_unknown_config_keys_are_dropped_and_bad_files_refused(tiny, tmp_path):
    make_delta(tiny).save(tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    (tmp_path / CONFIG_NAME).write_text(json.dumps(config | {"from_the_future": 1}))
    assert Delta.load(tmp_path).config.classnames == ["a", "b"]
    (tmp_path / CONFIG_NAME).write_text(json.dumps(config | {"method": "lora"}))
    with pytest.raises(DeltaError, match="lora"):
        Delta.load(tmp_path)
    (tmp_path / WEIGHTS_NAME).unlink()
    with pytest.raises(DeltaError, match=WEIGHTS_NAME):
        Delta.load(tmp_path)


def test_vit_b_16_delta_is_under_200_kb(tmp_path):
    base = create_base_model("ViT-B-16")
    make_delta(base).save(tmp_path)
    size = (tmp_path / WEIGHTS_NAME).stat().st_size + (tmp_path / CONFIG_NAME).stat().st_size
    assert size <= 200_000, size


def test_moving_a_moved_delta_records_the_product_of_the_factors(tiny):
    from clipfit_core.delta import Delta, DeltaConfig, extract_delta, toward_base

    tensors = {k: v + 1.0 for k, v in extract_delta(tiny.model).items()}
    delta = Delta(tensors, DeltaConfig(base_model=tiny.spec, base_fingerprint=tiny.fingerprint,
                                       classnames=["a"], templates=["{}"]))
    twice = toward_base(tiny, toward_base(tiny, delta, 0.5), 0.5)
    once = toward_base(tiny, delta, 0.25)
    assert twice.config.hyperparameters["alpha"] == 0.25
    for name, t in once.tensors.items():
        assert torch.allclose(twice.tensors[name], t, atol=1e-6)
        assert not torch.equal(t, tensors[name])


def test_config_problems_hold_a_config_to_what_clipfit_writes(tiny):
    from clipfit_core.delta import config_problems

    good = make_delta(tiny).config_dict()
    assert config_problems(good) == []
    assert config_problems(good, allowed_base_models=[tiny.spec], max_classes=2) == []
    minimal = {k: good[k] for k in ("method", "base_model", "base_fingerprint", "classnames",
                                    "templates")}
    assert config_problems(minimal) == []  # the optional keys take their defaults
    deep: dict = {}
    for _ in range(20):
        deep = {"x": [deep]}
    # checked first, alone: past them nothing else is
    for config, message in [
        ([1, 2], "adapter_config.json is not a JSON object"),
        (good | {"metrics": deep}, "adapter_config.json nests deeper than 8 levels"),
        (good | {"method": "lora"}, "method must be 'clipfit', not 'lora'"),
        ({"method": "clipfit", "classnames": ["a", "b"]},
         "adapter_config.json lacks ['base_model', 'base_fingerprint', 'templates']"),
    ]:
        assert config_problems(config) == [message]
    # the rest: every problem at once
    bad = good | {"classnames": ["a", "a", " b"], "templates": ["no placeholder"],
                  "hyperparameters": {"a": {"b": {"c": {"d": 1}}}}, "metrics": [],
                  "base_fingerprint": 12345, "arch": 7, "pretrained": "x" * 501,
                  "format_version": True, "base_model": "ViT-B-16:openai",
                  "calibration": {"temperature": float("nan"), "threshold": 2},
                  "evaluation": {"classnames": ["x"]}}
    problems = config_problems(bad, allowed_base_models=["clipfit-tiny"], max_classes=2)
    assert problems == [
        "3 classes, the limit is 2",
        "class name ' b' has leading or trailing spaces",
        "duplicate class names: 'a'",
        problems[3],  # the template's own words (clipfit_core.prompts)
        "hyperparameters must be a JSON object of at most 3 levels and 64 KB",
        "metrics must be a JSON object of at most 3 levels and 64 KB",
        "base_fingerprint must be 64 hexadecimal digits",
        "arch must be a string of at most 500 characters",
        "pretrained must be a string of at most 500 characters",
        ("'calibration.temperature' is not a finite number (NaN, infinity, or too large for a "
        "float)"),
        "format_version must be from 1 to 1",
        "calibration.temperature must be a number from 0.05 to 20.0",
        "calibration.threshold must be null or a number from 0 to 1",
        "evaluation does not have the shape of a clipfit report for these classes",
        "base_model 'ViT-B-16:openai' is not allowed here; allowed: ['clipfit-tiny']",
    ]
    assert "no placeholder" in problems[3]
    assert config_problems(good | {"classnames": ["a"]}) == \
        ["classnames must be a list of at least 2 strings"]
    assert config_problems(good | {"format_version": 2}) == \
        ["format_version must be from 1 to 1 (2 is newer: upgrade clipfit)"]
    assert config_problems(good | {"calibration": {"temperature": 10 ** 400}}) == \
        ["calibration.temperature must be a number from 0.05 to 20.0"]
    assert config_problems(good | {"base_model": ""}) == \
        ["base_model '' must be a model spec (a string)"]


def test_load_checks_the_config_before_the_tensors(tiny, tmp_path):
    make_delta(tiny).save(tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    (tmp_path / CONFIG_NAME).write_text(json.dumps(
        config | {"classnames": ["a", "a"], "format_version": 3}))
    with pytest.raises(DeltaError, match="duplicate class names") as e:
        Delta.load(tmp_path)
    assert e.value.problems == [
        "duplicate class names: 'a'",
        "format_version must be from 1 to 1 (3 is newer: upgrade clipfit)"]
    (tmp_path / CONFIG_NAME).write_text("{not json")
    with pytest.raises(DeltaError, match="not a valid delta config"):
        Delta.load(tmp_path)


def test_load_refuses_non_finite_numbers_and_tensors_as_an_import_does(tiny, tmp_path):
    from safetensors.torch import load_file, save_file

    make_delta(tiny).save(tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    (tmp_path / CONFIG_NAME).write_text(json.dumps(config | {"metrics": {"loss": float("inf")}}))
    with pytest.raises(DeltaError) as e:
        Delta.load(tmp_path)
    assert e.value.problems == [
        "'metrics.loss' is not a finite number (NaN, infinity, or too large for a float)"]
    (tmp_path / CONFIG_NAME).write_text(json.dumps(config))
    tensors = load_file(tmp_path / WEIGHTS_NAME)
    name = min(tensors)
    save_file(tensors | {name: torch.full_like(tensors[name], float("nan"))},
              tmp_path / WEIGHTS_NAME)
    with pytest.raises(DeltaError) as e:
        Delta.load(tmp_path)
    assert e.value.problems == [
        f"tensor {name!r} holds {tensors[name].numel()} NaN or infinite values"]
    save_file(tensors | {name: tensors[name].to(torch.int32)}, tmp_path / WEIGHTS_NAME)
    with pytest.raises(DeltaError, match=f"tensor {name!r} is int32, not floating point"):
        Delta.load(tmp_path)
