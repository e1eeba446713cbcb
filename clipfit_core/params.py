"""Which tensors ClipFit trains, and nothing else.

Text tower: the bias of every FFN output projection (``transformer.resblocks.{i}.mlp.c_proj.bias``).
Image tower: every LayerNorm weight and bias (``visual.ln_pre``, ``visual.ln_post``, and each
block's ``ln_1`` / ``ln_2``). For ViT-B-16 that is 6,144 + 39,936 = 46,080 numbers.
"""

from __future__ import annotations

from collections import OrderedDict

import open_clip
import torch
from open_clip.transformer import TextTransformer, VisionTransformer


class UnsupportedArchitectureError(ValueError):
    """The model has no image LayerNorms or no open_clip text transformer to tune."""


def supported_architectures() -> list[str]:
    """open_clip architectures with a ViT image tower and an open_clip text transformer."""
    names = []
    for name in open_clip.list_models():
        cfg = open_clip.get_model_config(name) or {}
        vision, text = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
        if isinstance(vision.get("layers"), int) and "timm_model_name" not in vision \
                and "hf_model_name" not in text and "multimodal_cfg" not in cfg:
            names.append(name)
    return names


def _text_transformer(model: torch.nn.Module) -> tuple[str, torch.nn.Module]:
    """The text tower's residual transformer and its name prefix in the state dict."""
    if isinstance(getattr(model, "text", None), TextTransformer):
        return "text.transformer", model.text.transformer
    if hasattr(model, "transformer") and hasattr(model, "token_embedding"):
        return "transformer", model.transformer
    return "", None


def trainable_parameters(model: torch.nn.Module) -> OrderedDict[str, torch.nn.Parameter]:
    """The ClipFit tensors of ``model``, by state-dict name, in model order.

    Raises:
        UnsupportedArchitectureError: no ViT image tower (e.g. open_clip ResNets such as RN50,
            which have BatchNorms, not LayerNorms) or no open_clip text transformer.
    """
    visual = getattr(model, "visual", None)
    prefix, text = _text_transformer(model)
    if not isinstance(visual, VisionTransformer) or text is None:
        kind = type(visual).__name__ if visual is not None else "none"
        raise UnsupportedArchitectureError(
            f"ClipFit needs a ViT image tower with LayerNorms and an open_clip text transformer; "
            f"this model's image tower is {kind}. Supported architectures: "
            f"{', '.join(supported_architectures())}"
        )
    selected: OrderedDict[str, torch.nn.Parameter] = OrderedDict()
    for i, block in enumerate(text.resblocks):
        selected[f"{prefix}.resblocks.{i}.mlp.c_proj.bias"] = block.mlp.c_proj.bias
    for module_name, module in visual.named_modules():
        if isinstance(module, torch.nn.LayerNorm):
            for param_name, param in module.named_parameters(recurse=False):
                selected[f"visual.{module_name}.{param_name}"] = param
    missing = [n for n, p in selected.items() if p is None]
    if missing:
        raise UnsupportedArchitectureError(f"model has no tensors named {missing}")
    return selected


def count_trainable(model: torch.nn.Module) -> int:
    """Total number of numbers ClipFit trains in ``model``."""
    return sum(p.numel() for p in trainable_parameters(model).values())


def mark_trainable(
    model: torch.nn.Module, *, text: bool = True, image: bool = True
) -> OrderedDict[str, torch.nn.Parameter]:
    """Freeze everything, then unfreeze exactly the ClipFit tensors; return them.

    ``text=False`` or ``image=False`` keeps one tower's ClipFit tensors frozen too (the
    paper's ablations); a delta still carries all of them.
    """
    if not (text or image):
        raise ValueError("nothing to train: text and image are both off")
    selected = OrderedDict((n, p) for n, p in trainable_parameters(model).items()
                           if (image if n.startswith("visual.") else text))
    model.requires_grad_(False)
    for param in selected.values():
        param.requires_grad_(True)
    return selected
