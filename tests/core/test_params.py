import pytest

from clipfit_core.models import create_base_model
from clipfit_core.params import (
    UnsupportedArchitectureError,
    count_trainable,
    mark_trainable,
    trainable_parameters,
)


def expected_names(text_layers: int, vision_layers: int) -> list[str]:
    names = [f"transformer.resblocks.{i}.mlp.c_proj.bias" for i in range(text_layers)]
    names += ["visual.ln_pre.weight", "visual.ln_pre.bias"]
    for i in range(vision_layers):
        for ln in ("ln_1", "ln_2"):
            names += [f"visual.transformer.resblocks.{i}.{ln}.weight",
                      f"visual.transformer.resblocks.{i}.{ln}.bias"]
    names += ["visual.ln_post.weight", "visual.ln_post.bias"]
    return names


@pytest.mark.parametrize("arch", ["ViT-B-16", "ViT-B-32"])
def test_vit_b_trainable_tensors_are_exactly_the_spec(arch):
    model = create_base_model(arch, fingerprint=False).model
    selected = trainable_parameters(model)
    assert sorted(selected) == sorted(expected_names(12, 12))
    text = sum(p.numel() for n, p in selected.items() if not n.startswith("visual."))
    image = sum(p.numel() for n, p in selected.items() if n.startswith("visual."))
    assert (text, image, count_trainable(model)) == (6144, 39936, 46080)
    for name, p in selected.items():
        assert p.numel() == (512 if name.startswith("transformer.") else 768), name


def test_mark_trainable_unfreezes_only_the_selection(tiny):
    selected = mark_trainable(tiny.model)
    try:
        grads = {n for n, p in tiny.model.named_parameters() if p.requires_grad}
        assert grads == set(selected)
        assert not any("ln_final" in n or "c_fc" in n or "attn" in n or n == "logit_scale"
                       for n in grads)
    finally:
        tiny.model.requires_grad_(False)


def test_resnet_tower_is_refused_with_supported_list():
    model = create_base_model("RN50", fingerprint=False).model
    with pytest.raises(UnsupportedArchitectureError) as e:
        trainable_parameters(model)
    message = str(e.value)
    assert "ModifiedResNet" in message and "ViT-B-16" in message and "clipfit-tiny" in message
    assert "RN50" not in message.split("Supported architectures:")[1]
