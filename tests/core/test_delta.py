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
