import pytest
import torch
from safetensors.torch import save_file

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
