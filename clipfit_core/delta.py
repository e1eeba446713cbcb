"""A ClipFit delta: only the trained tensors, plus the metadata needed to use them.

On disk (like a PEFT adapter): ``adapter_model.safetensors`` (the trained values of the
ClipFit tensors, under open_clip state-dict names, float32) and ``adapter_config.json``.
The tensors hold the tuned values themselves, not differences, so applying a delta is a copy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import load_file
from safetensors.torch import save as save_bytes

from .models import BaseModel
from .params import trainable_parameters
from .prompts import classname_problems, resolve_templates, shorten

METHOD = "clipfit"
FORMAT_VERSION = 1
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
_FILE_METADATA = {"method": METHOD, "format_version": str(FORMAT_VERSION)}
MAX_NESTING = 8  # the evaluation report is the deepest part: 5 levels
MAX_FREE_NESTING, MAX_FREE_BYTES = 3, 65536  # hyperparameters, metrics
REQUIRED = ("base_model", "base_fingerprint", "classnames", "templates")


class DeltaError(ValueError):
    """A delta is malformed, or does not belong to the base model it is used with.
    ``problems``: every problem found (one, unless a config was checked)."""

    def __init__(self, message: str, problems: Sequence[str] | None = None):
        super().__init__(message)
        self.problems = list(problems) if problems else [message]


@dataclass
class DeltaConfig:
    base_model: str = field(metadata={"help": "model spec the delta was trained on"})
    base_fingerprint: str = field(metadata={"help": "sha256 of the base weights"})
    classnames: list[str] = field(metadata={"help": "classes, in logit order"})
    templates: list[str] = field(metadata={"help": "prompt templates, each with one {}"})
    arch: str = field(default="", metadata={"help": "open_clip architecture"})
    pretrained: str | None = field(default=None, metadata={"help": "pretrained tag or path"})
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] | None = field(default=None, metadata={
        "help": "zero-shot vs tuned on the held-out split (clipfit_core.report)"})
    calibration: dict[str, Any] | None = field(default=None, metadata={
        "help": "temperature and rejection threshold fitted on the held-out split"})
    trainable_count: int = 0
    method: str = METHOD
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeltaConfig:
        """Unknown keys are dropped, so newer files still load."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class Delta:
    tensors: dict[str, torch.Tensor]
    config: DeltaConfig

    @property
    def id(self) -> str:
        """Content hash of the tensors: equal deltas share text-feature cache entries."""
        if not hasattr(self, "_id"):
            h = hashlib.sha256(self.config.base_fingerprint.encode())
            for name in sorted(self.tensors):
                t = self.tensors[name].detach().cpu().contiguous().reshape(-1)
                h.update(name.encode())
                h.update(t.view(torch.uint8).numpy())
            self._id = h.hexdigest()
        return self._id

    def numel(self) -> int:
        return sum(t.numel() for t in self.tensors.values())

    def _cpu_tensors(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu", torch.float32).contiguous()
                for k, v in self.tensors.items()}

    def config_dict(self) -> dict[str, Any]:
        """The JSON metadata, as written to ``adapter_config.json``."""
        return self.config.to_dict() | {"trainable_count": self.numel()}

    def to_bytes(self) -> bytes:
        """The ``adapter_model.safetensors`` file's bytes (for storing a delta elsewhere)."""
        return save_bytes(self._cpu_tensors(), metadata=_FILE_METADATA)

    def save(self, directory: str | Path) -> Path:
        """Write exactly the two delta files into ``directory`` (created if needed)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        # one serializer: a saved delta is byte-identical to the one a service stores
        (directory / WEIGHTS_NAME).write_bytes(self.to_bytes())
        (directory / CONFIG_NAME).write_text(
            json.dumps(self.config_dict(), indent=2, sort_keys=True) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> Delta:
        """The delta in ``directory``; DeltaError naming every problem of its config
        (:func:`config_problems`) before the tensors are read, then every tensor that is
        not floating point or not finite (:func:`tensor_problems`)."""
        directory = Path(directory)
        config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        for path in (config_path, weights_path):
            if not path.is_file():
                raise DeltaError(f"{str(directory)!r} is not a ClipFit delta: {path.name} missing")
        try:
            config = json.loads(config_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DeltaError(f"{config_path} is not a valid delta config: {e}") from e
        problems = config_problems(config)
        if problems:
            raise DeltaError(f"{config_path}: {'; '.join(problems)}", problems)
        tensors = load_file(weights_path)
        problems = tensor_problems(tensors)
        if problems:
            raise DeltaError(f"{weights_path}: {'; '.join(problems)}", problems)
        return cls(tensors, DeltaConfig.from_dict(config))

    @classmethod
    def from_bytes(cls, weights: bytes, config: dict[str, Any]) -> Delta:
        """Rebuild a delta from ``to_bytes()`` and ``config_dict()`` (e.g. a database row)."""
        return cls(load_bytes(weights), DeltaConfig.from_dict(config))


def nesting(value, limit: int = MAX_NESTING) -> int:
    """How deeply lists and objects nest in ``value``, counted without recursion and no
    further than ``limit + 1``."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            if deepest > limit:
                return deepest
            stack.extend((child, level + 1)
                         for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def config_problems(config: dict, *, allowed_base_models: Sequence[str] | None = None,
                    max_classes: int | None = None) -> list[str]:
    """Every problem with a delta config (``adapter_config.json``, parsed), held to what
    clipfit itself writes; empty when there is none. The one check of every way a delta
    comes in: :meth:`Delta.load`, ``export.read_delta_zip`` and a service's import.

    Checked: a JSON object no deeper than MAX_NESTING, method, the required keys (these
    first: past them nothing else is checked), then the classes and templates by the rules
    of training, ``hyperparameters`` and ``metrics`` (objects of at most 3 levels and
    64 KB), the base fingerprint, ``arch`` and ``pretrained``, no NaN or infinite number
    anywhere (:func:`non_finite_problems`), ``format_version``, the evaluation report and calibration (``report.stored_problems``: no NaN, infinity or
    bool where a number is read) and the base model. Missing optional keys take
    :class:`DeltaConfig`'s defaults.

    Args:
        config: the parsed JSON.
        allowed_base_models: the base models that may be used (a service's allow-list);
            None: any.
        max_classes: the most classes allowed; None: no limit.
    """
    from .report import stored_problems  # torchmetrics: loaded when a config is checked

    if not isinstance(config, dict):
        return [f"{CONFIG_NAME} is not a JSON object"]
    if nesting(config) > MAX_NESTING:
        return [f"{CONFIG_NAME} nests deeper than {MAX_NESTING} levels"]
    if config.get("method") != METHOD:
        return [f"method must be {METHOD!r}, not {shorten(config.get('method'))}"]
    missing = [k for k in REQUIRED if k not in config]
    if missing:
        return [f"{CONFIG_NAME} lacks {missing}"]
    config = _config_defaults() | config
    problems = []
    classes = config["classnames"]
    if not _strings(classes) or len(classes) < 2:
        problems.append("classnames must be a list of at least 2 strings")
    else:
        problems += classname_problems(classes, max_count=max_classes)
    if not _strings(config["templates"]) or not config["templates"]:
        problems.append("templates must be a non-empty list of strings")
    else:
        try:
            resolve_templates(config["templates"])  # each one's form, and how many
        except ValueError as e:
            problems.append(str(e))
    for key in ("hyperparameters", "metrics"):
        value = config[key]
        if not isinstance(value, dict) or nesting(value) > MAX_FREE_NESTING \
                or len(json.dumps(value)) > MAX_FREE_BYTES:
            problems.append(f"{key} must be a JSON object of at most {MAX_FREE_NESTING} levels "
                            f"and {MAX_FREE_BYTES // 1024} KB")
    fingerprint = config["base_fingerprint"]
    if not isinstance(fingerprint, str) or not re.fullmatch(r"[0-9a-f]{64}", fingerprint):
        problems.append("base_fingerprint must be 64 hexadecimal digits")
    for key in ("arch", "pretrained"):
        if not isinstance(config[key], str | None) or len(config[key] or "") > 500:
            problems.append(f"{key} must be a string of at most 500 characters")
    problems += non_finite_problems(config)
    version = config["format_version"]
    if not isinstance(version, int) or isinstance(version, bool) \
            or not 1 <= version <= FORMAT_VERSION:
        newer = isinstance(version, int) and not isinstance(version, bool) \
            and version > FORMAT_VERSION
        problems.append(f"format_version must be from 1 to {FORMAT_VERSION}"
                        + (f" ({version} is newer: upgrade clipfit)" if newer else ""))
    problems += stored_problems(config)
    spec = config["base_model"]
    if allowed_base_models is None:
        if not isinstance(spec, str) or not spec.strip():
            problems.append(f"base_model {shorten(spec)} must be a model spec (a string)")
    elif not isinstance(spec, str) or spec not in allowed_base_models:
        problems.append(f"base_model {shorten(spec)} is not allowed here; allowed: "
                        f"{allowed_base_models}")
    return problems


def non_finite_problems(config: dict, limit: int = 10) -> list[str]:
    """Every number in ``config`` that is NaN or infinite, by its path (``metrics.loss``,
    ``evaluation.tuned.per_class[2].recall``): Python's JSON reader gives these for
    ``NaN``, ``Infinity`` and a number too large for a float (``1e999``), and no answer,
    database or JSON writer can carry them. At most ``limit`` paths are named."""
    found, stack = [], [(config, "")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            found.append(path)
        elif isinstance(value, dict):
            stack.extend((v, f"{path}.{k}" if path else str(k))
                         for k, v in reversed(value.items()))
        elif isinstance(value, list):
            stack.extend((v, f"{path}[{i}]") for i, v in reversed(list(enumerate(value))))
    problems = [f"{shorten(path, 80)} is not a finite number (NaN, infinity, or too large "
                "for a float)" for path in found[:limit]]
    if len(found) > limit:
        problems.append(f"... and {len(found) - limit} more numbers that are not finite")
    return problems


def tensor_problems(tensors: dict[str, torch.Tensor], limit: int = 10) -> list[str]:
    """Every tensor of a delta that is not floating point or holds NaN or infinity, by
    name: the delta's values replace the base's, so one such tensor turns every
    probability into NaN. At most ``limit`` are named."""
    problems = []
    for name in sorted(tensors):
        tensor = tensors[name]
        if not tensor.is_floating_point():
            problems.append(f"tensor {shorten(name, 80)} is {str(tensor.dtype)[6:]}, "
                            "not floating point")
        elif not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            problems.append(f"tensor {shorten(name, 80)} holds {bad} NaN or infinite values")
    if len(problems) > limit:
        problems = problems[:limit] + [f"... and {len(problems) - limit} more bad tensors"]
    return problems


def _config_defaults() -> dict[str, Any]:
    """DeltaConfig's default of each field that has one."""
    fields = dataclasses.fields(DeltaConfig)
    return {f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING
            else f.default for f in fields
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}


def _strings(values) -> bool:
    return isinstance(values, list) and all(isinstance(v, str) for v in values)


def toward_base(base: BaseModel, delta: Delta, alpha: float) -> Delta:
    """The delta moved toward the base by interpolation: ``base + alpha * (tuned - base)``
    for every tensor (``alpha`` 1 is the delta itself, 0 the base: zero-shot). Same size and
    serving cost as any delta; the config records ``alpha`` in its hyperparameters."""
    check_compatible(base, delta)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    params = trainable_parameters(base.model)
    tensors = {}
    for name, tuned in delta.tensors.items():
        start = params[name].detach().to("cpu", torch.float32)
        tensors[name] = start + alpha * (tuned.to("cpu", torch.float32) - start)
    before = delta.config.hyperparameters.get("alpha", 1.0)  # a delta moved already
    config = dataclasses.replace(delta.config,
                                 hyperparameters={**delta.config.hyperparameters,
                                                  "alpha": before * alpha})
    return Delta(tensors, config)


def extract_delta(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the model's current ClipFit tensors (float32, CPU)."""
    return {name: p.detach().to("cpu", torch.float32, copy=True)
            for name, p in trainable_parameters(model).items()}


def check_compatible(base: BaseModel, delta: Delta) -> None:
    """Refuse a delta trained on other base weights, or with other tensors."""
    if delta.config.base_fingerprint != base.fingerprint and not _legacy_quick_gelu(base, delta):
        raise DeltaError(
            f"delta was trained on base {delta.config.base_model!r} with weights fingerprint "
            f"{delta.config.base_fingerprint[:16]}..., but the loaded base {base.spec!r} has "
            f"{base.fingerprint[:16]}...; load the base model the delta was trained on"
        )
    params = trainable_parameters(base.model)
    if set(delta.tensors) != set(params):
        extra = sorted(set(delta.tensors) - set(params))
        missing = sorted(set(params) - set(delta.tensors))
        raise DeltaError(f"delta tensors do not match the base: unexpected {extra[:5]}, "
                         f"missing {missing[:5]}")
    for name, p in params.items():
        if tuple(delta.tensors[name].shape) != tuple(p.shape):
            raise DeltaError(f"delta tensor {name} has shape {tuple(delta.tensors[name].shape)}, "
                             f"the base has {tuple(p.shape)}")


def _legacy_quick_gelu(base: BaseModel, delta: Delta) -> bool:
    """A delta trained before fingerprints marked QuickGELU, on a pretrained tag that was
    QuickGELU then as now (``ViT-B-16:openai``): the plain digest of the same bytes."""
    if not base.legacy_fingerprint or delta.config.base_fingerprint != base.legacy_fingerprint:
        return False
    import open_clip

    tag = delta.config.pretrained or ""
    cfg = open_clip.get_pretrained_cfg(delta.config.arch or base.arch, tag) if tag else {}
    return bool(cfg and cfg.get("quick_gelu", False))


@torch.no_grad()
def apply_delta(base: BaseModel, delta: Delta) -> dict[str, torch.Tensor]:
    """Copy the delta into the base model; return the replaced values for ``restore``."""
    check_compatible(base, delta)
    params = trainable_parameters(base.model)
    originals = {name: p.detach().clone() for name, p in params.items()}
    for name, p in params.items():
        p.copy_(delta.tensors[name])
    return originals


@torch.no_grad()
def restore(base: BaseModel, originals: dict[str, torch.Tensor]) -> None:
    """Put back the values ``apply_delta`` replaced: the base is bit-identical again."""
    params = trainable_parameters(base.model)
    for name, value in originals.items():
        params[name].copy_(value)


@contextlib.contextmanager
def applied(base: BaseModel, delta: Delta | None) -> Iterator[BaseModel]:
    """``with applied(base, delta):`` runs with the delta in place (no-op for None)."""
    if delta is None:
        yield base
        return
    originals = apply_delta(base, delta)
    try:
        yield base
    finally:
        restore(base, originals)
