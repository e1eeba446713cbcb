"""The training spec: every ClipFit hyperparameter once, with its default, bounds and help.

The command line's ``clipfit train`` flags, the API's job form, the worker and the delta's
``hyperparameters`` all derive from :class:`TrainConfig`; nothing else states a default.
Fields marked ``exposed`` are what users set (CLI flags, API form fields); the others are
the paper's fixed recipe. ``runtime`` fields (mixed precision, loader workers) change how a
run executes, not what it learns, and are not saved with the delta.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .recipes import PAPER, SMALL_BASE, get_recipe

if TYPE_CHECKING:  # data.py loads torch: the spec stays importable without it (the client)
    from .data import FewShotDataset


def hp(default: Any, help: str, *, exposed: bool = False, runtime: bool = False,
       public: str | None = None, input: str | None = None, choices: tuple | None = None,
       **bounds: float):
    """A spec field: ``bounds`` are pydantic-style ``ge``, ``gt``, ``le``, ``lt``;
    ``public`` is the name in saved configs, the API and the CLI when it differs from the
    field's; ``input`` the name of the API form field and CLI flag when that differs too."""
    meta = {"help": help, "exposed": exposed, "runtime": runtime, "bounds": bounds}
    if public:
        meta["public"] = public
    if input:
        meta["input"] = input
    if choices:
        meta["choices"] = choices
    return field(default=default, metadata=meta)


_CHECKS = {"ge": (lambda v, b: v >= b, ">="), "gt": (lambda v, b: v > b, ">"),
           "le": (lambda v, b: v <= b, "<="), "lt": (lambda v, b: v < b, "<")}


@dataclass
class TrainConfig:
    """A ClipFit training run (CLIPFIT_METHOD.md): the paper's recipe by default."""

    epochs: int = hp(PAPER.values["epochs"], "passes over the few-shot training set",
                     exposed=True, ge=1, le=10_000)
    lr: float = hp(PAPER.values["lr"], f"peak SGD learning rate (the paper: "
                   f"{PAPER.values['lr']})", exposed=True, gt=0, le=10)
    batch_size: int = hp(PAPER.values["batch_size"], "images per step", exposed=True, ge=1,
                         le=1024)
    shots: int = hp(16, "training images per class (at most), drawn after the validation "
                    "split", exposed=True, ge=1, le=10_000)
    val_fraction: float = hp(0.2, "fraction of each class held out for best-epoch selection "
                             "and the zero-shot vs tuned accuracy (0: none)", exposed=True,
                             ge=0, le=0.5)
    lambda_kd: float = hp(PAPER.values["lambda"], "weight of the text-feature distillation "
                          f"term (the paper: {PAPER.values['lambda']:g})", exposed=True,
                          public="lambda", ge=0, le=1000)
    seed: int = hp(0, "seed of the split, the shots, the shuffling and the augmentation",
                   exposed=True, ge=0, le=2**32 - 1)
    crop_min: float = hp(PAPER.values["crop_min"], "smallest area fraction of the random "
                         f"resized crop (the paper: {PAPER.values['crop_min']}; raise it for "
                         "tiny images)", exposed=True, gt=0, le=1)
    alpha: float = hp(PAPER.values["alpha"], "move the tuned values toward the base's by this "
                      "factor after training: base + alpha * (tuned - base); 1 is the paper's "
                      f"ClipFit, the {SMALL_BASE.name} recipe uses {SMALL_BASE.values['alpha']}"
                      " (keeps new-class accuracy at zero-shot's)", exposed=True, gt=0, le=1)
    templates: str | list[str] = hp(  # noqa: RUF009 (a name, resolved to a list below)
        "default", "prompt template: a name (imagenet, oxford_pets, ...), an ensemble "
        "(imagenet80, imagenet7), or a string with one {}", exposed=True, input="template")
    momentum: float = hp(0.9, "SGD momentum", ge=0, lt=1)
    weight_decay: float = hp(5e-4, "SGD weight decay", ge=0, le=1)
    warmup_epochs: int = hp(1, "epochs at the constant warm-up rate", ge=0, le=10_000)
    warmup_lr: float = hp(1e-5, "the constant warm-up rate", gt=0, le=10)
    train_text: bool = hp(True, "train the text FFN output biases")
    train_image: bool = hp(True, "train the image LayerNorms")
    amp: str = hp("auto", "mixed precision on GPU (ignored on CPU)", runtime=True,
                  choices=("auto", "bf16", "fp16", "none"))
    num_workers: int = hp(-1, "data loader worker processes (-1: 0 on CPU, up to 8 on GPU)",
                          runtime=True, input="workers", ge=-1, le=64)

    def __post_init__(self):
        problems = []
        for f in dataclasses.fields(self):
            value, meta = getattr(self, f.name), f.metadata
            name = input_name(f)
            if isinstance(value, float) and not math.isfinite(value):
                problems.append(f"{name} must be a finite number, got {value}")
                continue
            for kind, bound in meta["bounds"].items():
                check, symbol = _CHECKS[kind]
                if not check(value, bound):
                    problems.append(f"{name} must be {symbol} {bound}, got {value}")
            if "choices" in meta and value not in meta["choices"]:
                problems.append(f"{name} must be one of {', '.join(meta['choices'])}, "
                                f"got {value!r}")
        if not (self.train_text or self.train_image):
            problems.append("train_text and train_image are both off: nothing to train")
        from .prompts import resolve_templates  # open_clip's template lists: loaded on use

        try:
            self.templates = resolve_templates(self.templates)
        except ValueError as e:
            problems.append(str(e))
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def crop_scale(self) -> tuple[float, float]:
        return (self.crop_min, 1.0)

    def to_dict(self) -> dict[str, Any]:
        """The hyperparameters under their public names (runtime options left out), as
        stored with a job and in a delta's config."""
        return {public_name(f): _plain(getattr(self, f.name))
                for f in dataclasses.fields(self) if not f.metadata["runtime"]}

    @classmethod
    def from_dict(cls, data: dict[str, Any], **overrides: Any) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys (say, from a newer version) are dropped,
        missing ones take their defaults."""
        by_public = {public_name(f): f.name for f in dataclasses.fields(cls)}
        known = {by_public[k]: v for k, v in data.items() if k in by_public}
        return cls(**(known | overrides))

    @classmethod
    def from_recipe(cls, name: str, **overrides: Any) -> TrainConfig:
        """The named recipe (``clipfit_core.recipes``: paper, small-base, demo), with
        ``overrides`` (field names) on top; the fields it leaves out take their defaults."""
        return cls(**(recipe_fields(name) | overrides))

    @classmethod
    def exposed_fields(cls) -> list[dataclasses.Field]:
        """The fields users set (API form fields and CLI flags), in declaration order."""
        return [f for f in dataclasses.fields(cls) if f.metadata["exposed"]]

    @classmethod
    def runtime_fields(cls) -> list[dataclasses.Field]:
        """How a run executes (CLI flags only; a service's workers decide these)."""
        return [f for f in dataclasses.fields(cls) if f.metadata["runtime"]]


def public_name(f: dataclasses.Field) -> str:
    """The field's name in saved configs (``lambda`` for ``lambda_kd``)."""
    return f.metadata.get("public", f.name)


def input_name(f: dataclasses.Field) -> str:
    """The API form field and CLI flag (``--`` and dashes) of an exposed field."""
    return f.metadata.get("input", public_name(f))


def recipe_fields(name: str) -> dict[str, Any]:
    """The named recipe's values by spec field name (``lambda_kd`` for ``lambda``)."""
    by_public = {public_name(f): f.name for f in dataclasses.fields(TrainConfig)}
    return {by_public[k]: v for k, v in get_recipe(name).values.items()}


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def prepare_training_set(
    dataset: FewShotDataset, config: TrainConfig
) -> tuple[FewShotDataset, FewShotDataset | None]:
    """(training set, validation set or None): split first, so the held-out images never
    depend on ``shots``, then draw up to ``shots`` training images per class."""
    from .data import sample_few_shot, split_train_val

    train, val = dataset, None
    if config.val_fraction > 0:
        train, val = split_train_val(dataset, config.val_fraction, seed=config.seed)
        val = val if len(val) else None
    train = sample_few_shot(train, config.shots, seed=config.seed)
    return train, val


# ``auto`` hyperparameters: the rule (README, "auto hyperparameters"). Bases pretrained here
# (small models, far from their pretraining) take the small-base recipe's epochs and rate
# (the replication study's); others the paper recipe's rate, with epochs from a budget of
# steps like the paper's ImageNet run.
AUTO = "auto"
AUTO_FIELDS = ("epochs", "lr", "batch_size")
SMALL_BASES = ("clipfit-tiny", "clipfit-mini")
PAPER_BATCH = PAPER.values["batch_size"]
STEP_BUDGET = 5000  # ImageNet in the paper: 16,000 images / 32 x 10 epochs
EPOCH_RANGE = (10, 100)  # the paper's two settings (large datasets, the others)


def number_or_auto(kind: type) -> Callable[[str], Any]:
    """A command-line type: ``kind(text)``, or ``"auto"`` as it is."""
    def parse(text: str):
        return AUTO if text == AUTO else kind(text)
    parse.__name__ = kind.__name__  # argparse names the type in its error message
    return parse


def auto_values(*, base_model: str, train_images: int, batch_size: int | None = None
                ) -> dict[str, int | float]:
    """The ``auto`` value of each of AUTO_FIELDS for a base model and a training set size
    (after the validation split and the shots); ``batch_size`` when the user set it."""
    batch = batch_size or max(1, min(PAPER_BATCH, train_images))
    arch = base_model.split(":", 1)[0].strip()
    if arch in SMALL_BASES:
        return {"epochs": SMALL_BASE.values["epochs"], "lr": SMALL_BASE.values["lr"],
                "batch_size": batch}
    steps_per_epoch = max(1, math.ceil(train_images / batch))
    low, high = EPOCH_RANGE
    return {"epochs": min(high, max(low, round(STEP_BUDGET / steps_per_epoch))),
            "lr": PAPER.values["lr"], "batch_size": batch}


def with_auto(values: dict[str, Any], dataset: FewShotDataset, *, base_model: str
              ) -> tuple[TrainConfig, list[str]]:
    """A spec from field values where any of AUTO_FIELDS may be ``"auto"``, resolved for
    ``dataset`` (the whole labelled set: the split and the shots are drawn here as training
    will draw them). Returns the spec and the names that were ``auto``."""
    autos = [k for k in AUTO_FIELDS if values.get(k) == AUTO]
    if not autos:
        return TrainConfig(**values), []
    defaults = {k: TrainConfig.__dataclass_fields__[k].default for k in autos}
    draft = TrainConfig(**(values | defaults))
    train, _ = prepare_training_set(dataset, draft)
    chosen = auto_values(base_model=base_model, train_images=len(train),
                         batch_size=None if "batch_size" in autos else draft.batch_size)
    return TrainConfig(**(values | {k: chosen[k] for k in autos})), autos
