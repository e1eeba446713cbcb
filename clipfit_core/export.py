"""Adapters in the formats people load, and deltas brought in from elsewhere.

- ``delta``: the two PEFT-style files (``adapter_config.json``, ``adapter_model.safetensors``).
- ``open_clip``: the base with the delta merged into it, as open_clip's own files
  (``open_clip_model.safetensors`` and ``open_clip_config.json``, the layout of open_clip's
  Hugging Face repositories), plus ``clipfit_classes.json`` (classes and templates). It loads
  with ``open_clip.create_model_and_transforms(ARCH, pretrained=".../open_clip_model.safetensors")``
  and gives the service's outputs; ARCH is in ``clipfit_classes.json``.
- A PEFT adapter is not offered: see README ("Exports").

``read_delta_zip`` is the one reader of an uploaded delta: names and sizes are checked before
anything is inflated, members inflate with a running cap, the config is checked before the
tensors are read (with safetensors: no pickle), and the tensors before the delta is used.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Sequence
from pathlib import Path

import open_clip
import torch
from safetensors.torch import save_file

from .delta import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    Delta,
    DeltaError,
    check_compatible,
    config_problems,
    tensor_problems,
)
from .models import BaseModel, uses_quick_gelu
from .prompts import shorten
from .zips import MemberError, MemberTooLarge, read_member, unsafe_name

FORMATS = ("delta", "open_clip")
OPEN_CLIP_WEIGHTS = "open_clip_model.safetensors"
OPEN_CLIP_CONFIG = "open_clip_config.json"
CLASSES_NAME = "clipfit_classes.json"
MAX_CONFIG_BYTES = 4 * 1024 * 1024  # classes, templates and the evaluation report
MAX_WEIGHTS_BYTES = 64 * 1024 * 1024  # a ViT-L/14 delta is about 0.5 MB
MAX_MEMBERS = 10  # the two files, and what a zip tool adds (folders, __MACOSX, .DS_Store)


def merged_state_dict(base: BaseModel, delta: Delta) -> dict[str, torch.Tensor]:
    """The base's state dict with the delta's tensors in place of the base's (CPU). Only the
    delta's tensors are new; the rest are the base's own tensors, not copies."""
    check_compatible(base, delta)
    state = {k: v.detach().to("cpu") for k, v in base.model.state_dict().items()}
    for name, tensor in delta.tensors.items():
        state[name] = tensor.detach().to("cpu", state[name].dtype).contiguous()
    return state


def open_clip_arch(base: BaseModel) -> str:
    """The architecture name open_clip must be given: a QuickGELU base needs its
    ``-quickgelu`` twin unless the architecture is QuickGELU already."""
    arch = base.arch
    if uses_quick_gelu(base.model) and not open_clip.get_model_config(arch).get("quick_gelu"):
        return f"{arch}-quickgelu"
    return arch


def write_open_clip(base: BaseModel, delta: Delta, directory: str | Path) -> Path:
    """The merged model as open_clip's files in ``directory`` (created)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = merged_state_dict(base, delta)
    save_file({k: v.contiguous() for k, v in state.items()}, str(directory / OPEN_CLIP_WEIGHTS))
    arch = open_clip_arch(base)
    model_cfg = dict(open_clip.get_model_config(arch) or {})
    if uses_quick_gelu(base.model):
        model_cfg["quick_gelu"] = True
    preprocess = {"size": base.image_size, "mean": list(base.mean), "std": list(base.std),
                  "interpolation": base.interpolation}
    (directory / OPEN_CLIP_CONFIG).write_text(json.dumps(
        {"model_cfg": model_cfg, "preprocess_cfg": preprocess}, indent=2) + "\n")
    (directory / CLASSES_NAME).write_text(json.dumps({
        "arch": arch, "base_model": delta.config.base_model,
        "base_fingerprint": delta.config.base_fingerprint, "method": delta.config.method,
        "classnames": delta.config.classnames, "templates": delta.config.templates,
        "calibration": delta.config.calibration,
        "load": f"open_clip.create_model_and_transforms({arch!r}, "
                f"pretrained='{OPEN_CLIP_WEIGHTS}', image_mean={list(base.mean)}, "
                f"image_std={list(base.std)}, image_interpolation={base.interpolation!r})",
    }, indent=2) + "\n")
    return directory


def write_delta(delta: Delta, directory: str | Path) -> Path:
    return delta.save(directory)


def zip_directory(directory: str | Path, target: str | Path) -> Path:
    """Every file of ``directory`` in a zip (stored: safetensors does not compress)."""
    directory, target = Path(directory), Path(target)
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as z:
        for path in sorted(directory.iterdir()):
            z.write(path, path.name)
    return target


def read_delta_zip(data: bytes, *, allowed_base_models: Sequence[str] | None = None,
                   max_classes: int | None = None) -> Delta:
    """A delta from a zip of its two files (as ``download`` gives it), checked before it
    is used: the entries (at most MAX_MEMBERS; safe names, :func:`zips.unsafe_name`; the
    two files once each and nothing else), their sizes (as declared, then as inflated,
    with a running cap: :func:`zips.read_member`), the config (JSON; every rule of
    :func:`delta.config_problems`, given ``allowed_base_models`` and ``max_classes``, which
    refuses NaN and infinity anywhere) before the tensors are read, then the tensors
    (safetensors, no pickle; floating point and finite: :func:`delta.tensor_problems`).
    Raises DeltaError naming every problem found (``problems``)."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as e:
        raise DeltaError(f"not a zip archive ({type(e).__name__})") from e
    entries = archive.infolist()
    if len(entries) > MAX_MEMBERS:
        raise DeltaError(f"the zip has {len(entries)} entries; a delta zip has 2")
    unsafe = [f"entry {shorten(m.filename, 80)} has an unsafe name (an absolute path or '..')"
              for m in entries if unsafe_name(m.filename)]
    if unsafe:
        raise DeltaError("; ".join(unsafe), unsafe)
    names = [Path(m.filename).name for m in entries if not m.is_dir()]
    if len(names) != len(set(names)):
        raise DeltaError("the zip holds two files of the same name")
    members = {Path(m.filename).name: m for m in entries
               if not m.is_dir() and not Path(m.filename).name.startswith(".")
               and "__MACOSX" not in m.filename}
    problems = []
    for name, limit in ((CONFIG_NAME, MAX_CONFIG_BYTES), (WEIGHTS_NAME, MAX_WEIGHTS_BYTES)):
        if name not in members:
            problems.append(f"the zip has no {name}")
        elif members[name].file_size > limit:
            problems.append(f"{name} is {members[name].file_size} bytes, the limit is {limit}")
        elif members[name].flag_bits & 0x1:
            problems.append(f"{name} is encrypted")
    extra = sorted(set(members) - {CONFIG_NAME, WEIGHTS_NAME})
    if extra:
        problems.append(f"unexpected files in the zip: {extra[:5]}")
    if problems:
        raise DeltaError("; ".join(problems), problems)
    config_bytes = _member(archive, members[CONFIG_NAME], MAX_CONFIG_BYTES)
    try:
        config = json.loads(config_bytes.decode("utf-8"))
    except (ValueError, RecursionError) as e:  # not UTF-8, not JSON, nested too deeply
        raise DeltaError(f"{CONFIG_NAME} cannot be read: not JSON ({type(e).__name__})") from e
    problems = config_problems(config, allowed_base_models=allowed_base_models,
                               max_classes=max_classes)
    if problems:
        raise DeltaError("; ".join(problems), problems)
    weights = _member(archive, members[WEIGHTS_NAME], MAX_WEIGHTS_BYTES)
    try:
        delta = Delta.from_bytes(weights, config)
    except Exception as e:  # safetensors' own errors, a bad field type
        raise DeltaError(f"{WEIGHTS_NAME} or {CONFIG_NAME} cannot be read "
                         f"({type(e).__name__})") from e
    problems = tensor_problems(delta.tensors)
    if problems:
        raise DeltaError("; ".join(problems), problems)
    return delta


def _member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    """A member of a delta zip, inflated no further than ``limit`` bytes."""
    name = Path(info.filename).name
    try:
        return read_member(archive, info, limit)
    except MemberTooLarge as e:
        raise DeltaError(f"{name}: {e}") from e
    except MemberError as e:
        raise DeltaError(f"{name} cannot be read from the zip ({e})") from e
