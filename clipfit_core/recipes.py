"""Named training recipes: the hyperparameter settings this project states, each once.

A recipe is a set of :class:`~clipfit_core.config.TrainConfig` values under their public
names (``lambda`` for ``lambda_kd``); the fields it leaves out keep their defaults, and
values given explicitly (a command-line flag, an API field) override it.

- ``paper``: the paper's recipe for ViT-B/16; :class:`TrainConfig`'s defaults are these.
- ``small-base``: the replication study's default recipe (README, "Replication"), for a small
  base far from its pretraining; ``auto`` takes its epochs and rate on the bases pretrained
  here.
- ``demo``: what ``scripts/demo.sh`` trains (clipfit-mini, blurred Fashion-MNIST, 16 images
  per class), also used by ``bench.openset``.

Pure Python (no torch): the demo's client reads it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    values: Mapping[str, Any]  # TrainConfig public field names -> values


def _recipe(name: str, description: str, **values: Any) -> Recipe:
    return Recipe(name, description, MappingProxyType(values))


PAPER = _recipe(
    "paper", "the paper's recipe (ViT-B/16, CLIPFIT_METHOD.md): TrainConfig's defaults",
    epochs=10, lr=0.002, batch_size=32, crop_min=0.08, alpha=1.0, **{"lambda": 8.0})
SMALL_BASE = _recipe(
    "small-base", "the replication study's default recipe, for a small base far from its "
    "pretraining (clipfit-mini): chosen on validation images", epochs=30, lr=0.1,
    crop_min=1.0, alpha=0.5, **{"lambda": 8.0})
DEMO = _recipe(
    "demo", "scripts/demo.sh's job: clipfit-mini on blurred Fashion-MNIST, 16 images per "
    "class, about a minute on 2 cores", epochs=40, lr=0.03, batch_size=32, crop_min=0.5)

RECIPES: dict[str, Recipe] = {r.name: r for r in (PAPER, SMALL_BASE, DEMO)}


def list_recipes() -> list[str]:
    """The recipe names."""
    return list(RECIPES)


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``; ValueError naming the known ones otherwise."""
    try:
        return RECIPES[name]
    except KeyError as e:
        raise ValueError(f"no recipe {name!r}; the recipes: {', '.join(RECIPES)}") from e
