"""Load a base CLIP through open_clip, and fingerprint its weights.

A model spec is one string:

- ``ARCH:TAG``   an open_clip pretrained tag, e.g. ``ViT-B-16:openai`` (local cache first,
                 then a download unless ``allow_download=False``);
- ``ARCH:PATH``  a local checkpoint file (``.safetensors``, ``.bin``, ``.pt``, ``.pth``) or a
                 directory holding one; OpenAI's own TorchScript files (``ViT-B-16.pt``) too.
                 The activation (GELU or OpenAI's QuickGELU) changes every feature but is not
                 in the weights, so it is taken from, in order: a TorchScript archive (OpenAI's:
                 QuickGELU); ``open_clip_config.json`` beside the checkpoint (``model_cfg``
                 ``quick_gelu``, as open_clip's hub exports write it); a ``-quickgelu``
                 architecture (``ViT-B-16-quickgelu:PATH``). A bare file of an architecture
                 that has QuickGELU weights anywhere (``ViT-B-16``: OpenAI's) is refused, with
                 the ways to say which in the message;
- ``ARCH``       random weights from a fixed seed (tests, parameter counts, ``clipfit-tiny``),
                 except for the models this project pretrains (``clipfit-mini``), whose
                 checkpoint is looked up in the weights directory (``cache_dir``).

Architectures are open_clip model configs; ``clipfit-tiny`` ships beside this module.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import open_clip
import torch
from torchvision import transforms as T

_CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(_CONFIG_DIR)

RANDOM_INIT_SEED = 0
# Architectures this project pretrains itself: their checkpoint lives in the weights directory
# under its name, and is built by the command given here.
LOCAL_PRETRAINED = {"clipfit-mini": "clipfit pretrain-mini"}
LOCAL_CHECKPOINT_NAME = "open_clip_model.safetensors"
CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
PREFERRED_CHECKPOINT_NAMES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "model.safetensors",
    "pytorch_model.bin",
)
_INTERPOLATION = {
    "bicubic": T.InterpolationMode.BICUBIC,
    "bilinear": T.InterpolationMode.BILINEAR,
    "nearest": T.InterpolationMode.NEAREST,
}

class WeightsUnavailableError(RuntimeError):
    """The weights a model spec names are neither on disk nor downloadable."""


class UnknownModelError(ValueError):
    """The architecture in a model spec is not an open_clip model config."""


@dataclass
class BaseModel:
    """A loaded base CLIP with everything needed to train on it and serve from it."""

    spec: str
    arch: str
    pretrained: str | None
    model: torch.nn.Module
    tokenizer: Callable[..., torch.Tensor]
    fingerprint: str
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    # QuickGELU models only: the digest of the bytes alone, as fingerprints were before the
    # activation was part of them (see delta.check_compatible)
    legacy_fingerprint: str = ""

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _eval_geometry(self) -> list:
        return [T.Resize(self.image_size, interpolation=_INTERPOLATION[self.interpolation]),
                T.CenterCrop(self.image_size)]

    def eval_transform(self) -> Callable:
        """Resize the shorter side, centre crop, normalize: CLIP's test-time preprocessing."""
        return T.Compose([
            *self._eval_geometry(),
            T.ToTensor(),
            T.Normalize(self.mean, self.std),
        ])

    def preprocess(self, images: list) -> torch.Tensor:
        """``eval_transform`` for a list of RGB PIL images as one (N, 3, S, S) batch: the
        same resize and crop per image, then one tensor conversion and normalization for
        all (bit-identical to stacking ``eval_transform`` outputs, several times faster).

        The arithmetic is numpy's, single-threaded: request threads of a server then do not
        start OpenMP teams that fight the inference thread's for the same cores."""
        geometry = T.Compose(self._eval_geometry())
        arrays = np.stack([np.asarray(geometry(im.convert("RGB") if im.mode != "RGB" else im))
                           for im in images])
        pixels = arrays.transpose(0, 3, 1, 2).astype(np.float32)  # a copy: NCHW, contiguous
        pixels /= np.float32(255)
        pixels -= np.asarray(self.mean, dtype=np.float32).reshape(1, 3, 1, 1)
        pixels /= np.asarray(self.std, dtype=np.float32).reshape(1, 3, 1, 1)
        return torch.from_numpy(pixels)

    def train_transform(self, scale: tuple[float, float]) -> Callable:
        """The paper's augmentation: random resized crop of area ``scale`` (bicubic) +
        horizontal flip."""
        return T.Compose([
            T.RandomResizedCrop(
                self.image_size, scale=scale, interpolation=_INTERPOLATION[self.interpolation]
            ),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(self.mean, self.std),
        ])


def resolve_device(name: str = "auto") -> str:
    """``auto`` is ``cuda`` when a GPU is present, else ``cpu``; a missing GPU is an error."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: no CUDA device is available here")
    return name


def parse_model_spec(spec: str) -> tuple[str, str | None]:
    """Split ``ARCH[:TAG_OR_PATH]`` into its two parts.

    Only the first colon separates: everything after it is the tag or the path.
    """
    if not spec or not spec.strip():
        raise UnknownModelError("empty model spec; expected ARCH, ARCH:TAG or ARCH:PATH")
    arch, sep, rest = spec.strip().partition(":")
    return arch, (rest or None) if sep else None


def list_architectures() -> list[str]:
    """Every architecture name open_clip knows, including the ones shipped here."""
    return open_clip.list_models()


def create_base_model(
    spec: str,
    *,
    device: str | torch.device = "cpu",
    cache_dir: str | os.PathLike | None = None,
    allow_download: bool = True,
    fingerprint: bool = True,
) -> BaseModel:
    """Build a base CLIP from a model spec (see the module docstring).

    Args:
        spec: ``ARCH``, ``ARCH:TAG`` or ``ARCH:PATH``.
        device: where the model lives after loading.
        cache_dir: the weights directory: the download cache to look in (and fill), and the
            home of locally pretrained checkpoints such as ``clipfit-mini``.
        allow_download: when False, a tag whose weights are not cached fails at once instead
            of trying the network.
        fingerprint: compute the sha256 fingerprint of the weights (skip only for counting).

    Raises:
        UnknownModelError: the architecture is not an open_clip config.
        WeightsUnavailableError: the weights are neither local nor downloadable; the message
            says how to provide them.
    """
    arch, source = parse_model_spec(spec)
    if open_clip.get_model_config(arch) is None:
        raise UnknownModelError(
            f"unknown architecture {arch!r} in model spec {spec!r}; "
            f"known: {', '.join(list_architectures())}"
        )
    weights = _resolve_weights(
        arch, source, spec=spec, cache_dir=cache_dir, allow_download=allow_download
    )
    checkpoint, preprocess = weights.checkpoint, weights.preprocess
    with torch.random.fork_rng(devices=[]):
        # Random-weight models must be the same on every load, so their fingerprint is too.
        torch.manual_seed(RANDOM_INIT_SEED)
        model = open_clip.create_model(arch, pretrained=None,
                                       force_quick_gelu=weights.quick_gelu)
    if checkpoint is not None:
        try:
            if weights.torchscript:
                model.load_state_dict(_torchscript_state_dict(checkpoint), strict=True)
            else:
                open_clip.load_checkpoint(model, str(checkpoint), strict=True)
        except Exception as e:
            raise WeightsUnavailableError(
                f"could not load checkpoint {str(checkpoint)!r} into {arch!r}: {e}"
            ) from e
    model.eval()
    model.requires_grad_(False)
    digest = bytes_fingerprint(model) if fingerprint else ""
    legacy = ""
    if digest and uses_quick_gelu(model):
        # deltas from before QuickGELU was marked carry the plain digest; those trained on a
        # QuickGELU pretrained tag were right, and check_compatible still takes them
        legacy = digest
        digest = hashlib.sha256(f"activation|QuickGELU|{digest}".encode()).hexdigest()
    model.to(device)
    cfg = open_clip.get_model_preprocess_cfg(model)
    cfg.update(preprocess)
    size = cfg["size"]
    return BaseModel(
        spec=spec.strip(),
        arch=arch,
        pretrained=source,
        model=model,
        tokenizer=open_clip.get_tokenizer(arch),
        fingerprint=digest,
        legacy_fingerprint=legacy,
        image_size=size[0] if isinstance(size, (tuple, list)) else int(size),
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        interpolation=cfg.get("interpolation", "bicubic"),
    )


@dataclass(frozen=True)
class _Weights:
    checkpoint: Path | None  # None: random weights
    quick_gelu: bool = False  # force QuickGELU (an architecture's own config may also say so)
    preprocess: dict = field(default_factory=dict)  # mean / std / interpolation overrides
    torchscript: bool = False  # an OpenAI TorchScript archive


def _resolve_weights(
    arch: str,
    source: str | None,
    *,
    spec: str,
    cache_dir: str | os.PathLike | None,
    allow_download: bool,
) -> _Weights:
    """Where the weights come from, and what the file cannot say itself (the activation and
    the preprocessing)."""
    if source is None and arch in LOCAL_PRETRAINED:
        path = local_checkpoint_path(arch, cache_dir)
        if path is None or not path.is_file():
            raise WeightsUnavailableError(
                f"no {arch} checkpoint at {str(path) if path else '(no weights directory given)'}"
                f"; build it with `{LOCAL_PRETRAINED[arch]}` (same weights directory), or give "
                f"one as '{arch}:/path/to/checkpoint'"
            )
        return _Weights(path)
    if source is None:
        return _Weights(None)
    path = Path(source).expanduser()
    if path.is_dir():
        return _local_weights(arch, _checkpoint_in_dir(path, spec), spec)
    if path.is_file():
        return _local_weights(arch, path, spec)
    tag_cfg = open_clip.get_pretrained_cfg(arch, source)
    if not tag_cfg:
        if path.suffix in CHECKPOINT_SUFFIXES or os.sep in source:
            raise WeightsUnavailableError(
                f"checkpoint {source!r} in model spec {spec!r} does not exist; "
                "give an existing file or directory as ARCH:PATH"
            )
        tags = open_clip.list_pretrained_tags_by_model(arch)
        raise UnknownModelError(
            f"{source!r} in model spec {spec!r} is neither a local path nor a pretrained tag "
            f"of {arch!r}; known tags: {', '.join(tags) or 'none'}"
        )
    preprocess = {k: tag_cfg[k] for k in ("mean", "std", "interpolation") if k in tag_cfg}
    quick_gelu = bool(tag_cfg.get("quick_gelu", False))
    cached = _cached_tag_checkpoint(tag_cfg, cache_dir)
    if cached is None and allow_download:
        try:
            cached = Path(open_clip.download_pretrained(tag_cfg, cache_dir=cache_dir))
        except Exception as e:
            raise WeightsUnavailableError(_missing_weights_message(spec, arch, tag_cfg, e)) from e
    if cached is None:
        raise WeightsUnavailableError(_missing_weights_message(spec, arch, tag_cfg, None))
    return _Weights(cached, quick_gelu, preprocess, is_torchscript(cached))


def is_torchscript(path: Path) -> bool:
    """A TorchScript archive (``torch.jit.save``, as OpenAI ships CLIP): a zip with the
    model's code beside its data, which ``torch.save`` archives do not have."""
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.split("/", 2)[1:2] == ["code"] for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _torchscript_state_dict(path: Path) -> dict:
    """The state dict of an OpenAI TorchScript archive, as open_clip's OpenAI loader reads it:
    ``torch.jit.load`` on the CPU, without the archive's three non-tensor entries (and the
    causal text mask, which an archive traced from open_clip carries: it is rebuilt, not
    learned)."""
    state = torch.jit.load(str(path), map_location="cpu").state_dict()
    for key in ("input_resolution", "context_length", "vocab_size", "attn_mask"):
        state.pop(key, None)
    return {k: v.float() for k, v in state.items()}


def _local_weights(arch: str, path: Path, spec: str) -> _Weights:
    """A local checkpoint, with its activation settled or refused (see the module docstring)."""
    arch_quick = bool(open_clip.get_model_config(arch).get("quick_gelu", False))
    config_file = path.parent / "open_clip_config.json"
    if is_torchscript(path):
        return _Weights(path, True, {}, torchscript=True)
    if config_file.is_file():
        try:
            config = json.loads(config_file.read_text())
            model_cfg = config.get("model_cfg") or {}
            preprocess_cfg = config.get("preprocess_cfg") or {}
            quick = bool(model_cfg.get("quick_gelu", False))
            preprocess = {k: preprocess_cfg[k] for k in ("mean", "std", "interpolation")
                          if k in preprocess_cfg}
        except (ValueError, AttributeError, TypeError) as e:
            raise WeightsUnavailableError(
                f"{str(config_file)!r} beside the checkpoint of {spec!r} is not an open_clip "
                f"config (a JSON object with 'model_cfg'): {e}"
            ) from e
        if arch_quick and not quick:
            raise WeightsUnavailableError(
                f"{spec!r}: the architecture {arch!r} uses QuickGELU but "
                f"{str(config_file)!r} says quick_gelu is false; use the architecture without "
                f"'-quickgelu', or correct the config"
            )
        return _Weights(path, quick, preprocess)
    if arch_quick:
        return _Weights(path, True)
    if quick_gelu_weights_exist(arch):
        twin = f"{arch}-quickgelu"
        quick_way = (f"use the spec '{twin}:{path}'" if open_clip.get_model_config(twin)
                     else 'put an open_clip_config.json with {"model_cfg": {"quick_gelu": '
                          'true}} beside it')
        raise WeightsUnavailableError(
            f"cannot tell which activation the checkpoint {str(path)!r} was trained with: "
            f"weights for {arch!r} exist with GELU and with QuickGELU (OpenAI's), the files "
            f"look the same, and the wrong one changes every feature. Say which: for "
            f"QuickGELU weights (OpenAI's CLIP in open_clip's format), {quick_way}, or give "
            f"OpenAI's own TorchScript file ({arch}.pt); for GELU weights (LAION, DataComp), "
            f'put an open_clip_config.json with {{"model_cfg": {{"quick_gelu": false}}}} beside '
            f"it (open_clip's hub exports ship this file)"
        )
    return _Weights(path)


def quick_gelu_weights_exist(arch: str) -> bool:
    """Whether some pretrained weights of ``arch``'s shape use QuickGELU: a tag of ``arch``
    itself (OpenAI's) or of its ``-quickgelu`` twin."""
    for name in (arch, f"{arch}-quickgelu"):
        for tag in open_clip.list_pretrained_tags_by_model(name):
            if open_clip.get_pretrained_cfg(name, tag).get("quick_gelu", False):
                return True
        if name != arch and open_clip.get_model_config(name) is not None:
            return True
    return False


def local_checkpoint_path(arch: str, weights_dir: str | os.PathLike | None) -> Path | None:
    """Where the checkpoint of a locally pretrained architecture lives."""
    if weights_dir is None:
        return None
    return Path(weights_dir).expanduser() / arch / LOCAL_CHECKPOINT_NAME


def _cached_tag_checkpoint(tag_cfg: dict, cache_dir) -> Path | None:
    """The checkpoint of a pretrained tag if a previous download left it in the cache."""
    hub = tag_cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        # open_clip's convention: "org/repo/" (default file names) or "org/repo/file.bin".
        repo_id, filename = os.path.split(hub)
        names = [filename] if filename else []
        names += ["open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                  "open_clip_pytorch_model.bin"]
        for name in names:
            found = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
            if isinstance(found, str):
                return Path(found)
    url = tag_cfg.get("url", "")
    if url:
        root = Path(cache_dir) if cache_dir else Path("~/.cache/clip").expanduser()
        candidate = root / os.path.basename(url)
        if candidate.is_file():
            return candidate
    return None


def _missing_weights_message(spec: str, arch: str, tag_cfg: dict, error) -> str:
    where = tag_cfg.get("hf_hub") or tag_cfg.get("url") or "its source"
    reason = f" (download failed: {error})" if error else " (downloads disabled)"
    activation = ""
    if tag_cfg.get("quick_gelu", False):
        twin = f"{arch}-quickgelu"
        if open_clip.get_model_config(twin) is not None:
            activation = (f" with its open_clip_config.json beside it (these weights use "
                          f"QuickGELU, which a bare open_clip-format file cannot say: without "
                          f"the config, name the architecture '{twin}'; OpenAI's TorchScript "
                          f"{arch}.pt needs neither)")
    return (
        f"weights for {spec!r} are not available{reason}. Provide them one of these ways: "
        f"(1) run once with network access so they land in the cache; "
        f"(2) download the checkpoint from {where} and use the spec '{arch}:/path/to/file' "
        f"(or a directory holding it){activation}; "
        f"(3) pass a cache directory that already holds them (clipfit --cache-dir, or "
        f"CLIPFIT_WEIGHTS_DIR)."
    )


def _checkpoint_in_dir(path: Path, spec: str) -> Path:
    files = [p for p in sorted(path.iterdir()) if p.suffix in CHECKPOINT_SUFFIXES]
    for name in PREFERRED_CHECKPOINT_NAMES:
        if (path / name).is_file():
            return path / name
    if len(files) == 1:
        return files[0]
    if not files:
        raise WeightsUnavailableError(
            f"directory {str(path)!r} in model spec {spec!r} holds no checkpoint "
            f"({', '.join(CHECKPOINT_SUFFIXES)})"
        )
    raise WeightsUnavailableError(
        f"directory {str(path)!r} in model spec {spec!r} holds several checkpoints "
        f"({', '.join(p.name for p in files)}); name one file as ARCH:PATH"
    )


def weights_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over the state dict (``bytes_fingerprint``), marked with the activation when it
    is QuickGELU: the same bytes under another activation are another function, so a delta
    trained on one must not pass as fitting the other. GELU models keep the plain digest.

    Identical across loads of the same weights, whatever the device they end up on.
    """
    digest = bytes_fingerprint(model)
    if uses_quick_gelu(model):
        return hashlib.sha256(f"activation|QuickGELU|{digest}".encode()).hexdigest()
    return digest


def uses_quick_gelu(model: torch.nn.Module) -> bool:
    return any(isinstance(m, open_clip.transformer.QuickGELU) for m in model.modules())


def bytes_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over the state dict: names, dtypes, shapes and bytes, in sorted name order (what
    ``weights_fingerprint`` was before it marked QuickGELU)."""
    h = hashlib.sha256()
    state = model.state_dict()
    for name in sorted(state):
        tensor = state[name].detach()
        if tensor.device.type != "cpu":
            tensor = tensor.cpu()
        tensor = tensor.contiguous()
        h.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        h.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()
