import json
import warnings
from pathlib import Path

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from clipfit_core import models
from clipfit_core.config import TrainConfig
from clipfit_core.models import (
    UnknownModelError,
    WeightsUnavailableError,
    create_base_model,
    parse_model_spec,
    weights_fingerprint,
)


def test_parse_model_spec():
    assert parse_model_spec("ViT-B-16:openai") == ("ViT-B-16", "openai")
    assert parse_model_spec("ViT-B-16") == ("ViT-B-16", None)
    assert parse_model_spec("ViT-B-16:/w/a:b.pt") == ("ViT-B-16", "/w/a:b.pt")
    with pytest.raises(UnknownModelError):
        parse_model_spec("  ")


def test_fingerprint_is_identical_across_loads_and_tracks_weights(tiny):
    again = create_base_model("clipfit-tiny")
    assert again.fingerprint == tiny.fingerprint and len(tiny.fingerprint) == 64
    with torch.no_grad():
        again.model.visual.ln_pre.bias.add_(1e-3)
    assert weights_fingerprint(again.model) != tiny.fingerprint


def test_tiny_has_vit_b_tensor_names(tiny):
    names = set(tiny.model.state_dict())
    for expected in ("visual.ln_pre.weight", "visual.ln_post.bias",
                     "visual.transformer.resblocks.1.ln_2.weight",
                     "visual.transformer.resblocks.0.mlp.c_fc.weight",
                     "transformer.resblocks.1.mlp.c_proj.bias", "ln_final.weight"):
        assert expected in names
    assert tiny.image_size == 32


@pytest.mark.parametrize("layout", ["file", "dir"])
def test_local_checkpoint_file_and_directory(tmp_path, layout):
    trained = create_base_model("clipfit-tiny")
    with torch.no_grad():
        for p in trained.model.parameters():
            p.mul_(1.5)
    path = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in trained.model.state_dict().items()}, path)
    source = path if layout == "file" else tmp_path
    loaded = create_base_model(f"clipfit-tiny:{source}")
    assert loaded.fingerprint == weights_fingerprint(trained.model)
    assert loaded.fingerprint != create_base_model("clipfit-tiny").fingerprint
    assert loaded.pretrained == str(source)


def test_missing_weights_say_how_to_provide_them(tmp_path):
    with pytest.raises(WeightsUnavailableError) as e:
        create_base_model("ViT-B-16:openai", allow_download=False, cache_dir=tmp_path)
    message = str(e.value)
    assert "ViT-B-16:openai" in message and "ViT-B-16:/path/to/file" in message
    # OpenAI's weights use QuickGELU: the message says how to keep it for a local file
    assert "'ViT-B-16-quickgelu'" in message and "ViT-B-16.pt" in message
    assert "--cache-dir" in message


def test_missing_local_checkpoint_and_unknown_names(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        create_base_model(f"clipfit-tiny:{tmp_path / 'nope.pt'}")
    with pytest.raises(WeightsUnavailableError, match="holds no checkpoint"):
        create_base_model(f"clipfit-tiny:{tmp_path}")
    with pytest.raises(UnknownModelError, match="known tags"):
        create_base_model("ViT-B-16:not-a-tag")
    with pytest.raises(UnknownModelError, match="unknown architecture 'ViT-Q-99'"):
        create_base_model("ViT-Q-99")


def test_transforms_match_model_size(tiny, colour_train):
    from clipfit_core.data import open_image

    image = open_image(next(colour_train.glob("red/*.png")))
    for transform in (tiny.eval_transform(), tiny.train_transform(TrainConfig().crop_scale)):
        assert tuple(transform(image).shape) == (3, 32, 32)


# --- The activation of local weights (QuickGELU vs GELU) -------------------------------------

TINY_CFG = json.loads((Path(models.__file__).parent / "model_configs" / "clipfit-tiny.json")
                      .read_text())


def _direct(quick_gelu: bool) -> torch.nn.Module:
    """clipfit-tiny built directly by open_clip with random weights that are exact in float16
    (as OpenAI's are), under the given activation."""
    torch.manual_seed(7)
    # frozen like a loaded base model: with parameters that require grad, attention takes
    # another kernel path on some CPUs, which differs in the last bits (not a model change)
    model = open_clip.create_model("clipfit-tiny", force_quick_gelu=quick_gelu).eval()
    model.requires_grad_(False)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    return model


def _features(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(3, 3, 32, 32, generator=g)
    tokens = open_clip.get_tokenizer("clipfit-tiny")(["a photo of a cat.", "a dog", "x y z"])
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(tokens)


def _assert_same_function(loaded, direct):
    for a, b in zip(_features(loaded.model), _features(direct)):
        assert torch.equal(a, b)


def _save_safetensors(model, path):
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)


@pytest.fixture(scope="module")
def tiny_quickgelu_arch(tmp_path_factory):
    """clipfit-tiny's shape as a QuickGELU architecture (as open_clip ships ViT-B-16-quickgelu),
    under a name that is no twin of clipfit-tiny: registering it is global to the process."""
    folder = tmp_path_factory.mktemp("configs")
    (folder / "clipfit-tinyq-quickgelu.json").write_text(json.dumps({**TINY_CFG,
                                                                    "quick_gelu": True}))
    open_clip.add_model_config(folder)
    return "clipfit-tinyq-quickgelu"


@pytest.mark.parametrize("quick_gelu", [True, False])
def test_open_clip_config_beside_checkpoint_sets_the_activation(tmp_path, quick_gelu):
    direct = _direct(quick_gelu)
    _save_safetensors(direct, tmp_path / "open_clip_model.safetensors")
    (tmp_path / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": {**TINY_CFG, "quick_gelu": quick_gelu},
        "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}))
    for source in (tmp_path, tmp_path / "open_clip_model.safetensors"):
        loaded = create_base_model(f"clipfit-tiny:{source}")
        _assert_same_function(loaded, direct)
        assert loaded.mean == (0.5, 0.5, 0.5) and loaded.std == (0.25, 0.25, 0.25)
    other = _direct(not quick_gelu)
    assert not torch.allclose(_features(loaded.model)[0], _features(other)[0], atol=1e-4)


def test_openai_torchscript_file_loads_with_quickgelu(tmp_path):
    direct = _direct(True)
    # A TorchScript archive as OpenAI ships CLIP (open_clip's own trace_model helper cannot
    # trace a model whose image size is a tuple, so trace the two encoders directly).
    images, tokens = torch.zeros(2, 3, 32, 32), torch.zeros(2, 32, dtype=torch.long)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on Python control flow
        traced = torch.jit.trace_module(direct, {"encode_image": (images,),
                                                 "encode_text": (tokens,)}, check_trace=False)
    path = tmp_path / "clipfit-tiny.pt"
    torch.jit.save(traced, str(path))
    assert models.is_torchscript(path)
    loaded = create_base_model(f"clipfit-tiny:{path}")
    _assert_same_function(loaded, direct)
    assert loaded.fingerprint == weights_fingerprint(direct)


def test_quickgelu_architecture_loads_a_bare_file(tmp_path, tiny_quickgelu_arch):
    direct = _direct(True)
    path = tmp_path / "weights.safetensors"
    _save_safetensors(direct, path)
    _assert_same_function(create_base_model(f"{tiny_quickgelu_arch}:{path}"), direct)
    # and a config that contradicts the architecture is refused rather than obeyed
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": {
        **TINY_CFG, "quick_gelu": False}}))
    with pytest.raises(WeightsUnavailableError, match="says quick_gelu is false"):
        create_base_model(f"{tiny_quickgelu_arch}:{path}")


def test_same_bytes_under_quickgelu_are_another_fingerprint():
    assert weights_fingerprint(_direct(True)) != weights_fingerprint(_direct(False))


def test_bare_file_of_an_architecture_with_openai_weights_is_refused(tmp_path):
    # Checked before any byte is read, so a stand-in file is enough for ViT-B-16's shape.
    path = tmp_path / "open_clip_pytorch_model.bin"
    path.write_bytes(b"not read")
    with pytest.raises(WeightsUnavailableError) as e:
        create_base_model(f"ViT-B-16:{path}")
    message = str(e.value)
    assert f"'ViT-B-16-quickgelu:{path}'" in message and "ViT-B-16.pt" in message
    assert '"quick_gelu": false' in message
    # clipfit-tiny has no QuickGELU weights anywhere: its bare files stay GELU, as before.
    assert not models.quick_gelu_weights_exist("clipfit-tiny")
    assert models.quick_gelu_weights_exist("ViT-B-16")


def test_deltas_from_before_quickgelu_was_fingerprinted_still_fit_their_tag(tmp_path):
    """A delta trained on ViT-B-16:openai before the fingerprint marked QuickGELU carries the
    plain digest of the same bytes: still accepted for a QuickGELU pretrained tag, never for
    a local file (whose activation was wrong then)."""
    from clipfit_core.delta import Delta, DeltaConfig, DeltaError, check_compatible, extract_delta

    direct = _direct(True)
    _save_safetensors(direct, tmp_path / "open_clip_model.safetensors")
    (tmp_path / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": {**TINY_CFG, "quick_gelu": True}}))
    base = create_base_model(f"clipfit-tiny:{tmp_path}")
    assert base.legacy_fingerprint == models.bytes_fingerprint(direct) != base.fingerprint

    def delta(fingerprint, pretrained):
        return Delta(extract_delta(base.model), DeltaConfig(
            base_model="x", base_fingerprint=fingerprint, classnames=["a"], templates=["{}"],
            arch="ViT-B-16", pretrained=pretrained))

    check_compatible(base, delta(base.fingerprint, str(tmp_path)))
    check_compatible(base, delta(base.legacy_fingerprint, "openai"))  # OpenAI's tag: QuickGELU
    with pytest.raises(DeltaError, match="fingerprint"):
        check_compatible(base, delta(base.legacy_fingerprint, str(tmp_path)))
    with pytest.raises(DeltaError, match="fingerprint"):
        check_compatible(base, delta("0" * 64, "openai"))
