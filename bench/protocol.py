"""The paper's base-to-new protocol on Fashion-MNIST domains: class splits, k-shot training
sets, validation sets (base classes only, from training images) and test sets.

Everything is index arithmetic over Fashion-MNIST's own train / test arrays, seeded, so every
method sees identical data for a (domain, split, seed) cell. Test images come only from the
test split, validation images only from the training split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

N_CLASSES = 10
# Two splits: the first five classes as base and the last five as new, then the swap.
SPLITS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "a": ((0, 1, 2, 3, 4), (5, 6, 7, 8, 9)),
    "b": ((5, 6, 7, 8, 9), (0, 1, 2, 3, 4)),
}


@dataclass(frozen=True)
class Cell:
    """One run of every method: a domain, a base/new split, a seed."""

    domain: str
    split: str
    seed: int

    @property
    def base_classes(self) -> tuple[int, ...]:
        return SPLITS[self.split][0]

    @property
    def new_classes(self) -> tuple[int, ...]:
        return SPLITS[self.split][1]


@dataclass(frozen=True)
class CellData:
    """Indices into Fashion-MNIST for one cell."""

    train: np.ndarray  # k shots per base class, from the training split
    val: np.ndarray  # other base-class training images: model selection only
    test_base: np.ndarray  # test split, base classes
    test_new: np.ndarray  # test split, new classes
    val_new: np.ndarray  # new-class training images: the default-recipe search only


def per_class_sample(labels: np.ndarray, classes, count: int, rng: np.random.Generator,
                     exclude: np.ndarray | None = None) -> np.ndarray:
    """``count`` indices of each class in ``classes`` (sorted), avoiding ``exclude``."""
    taken = set(exclude.tolist()) if exclude is not None else set()
    out = []
    for c in classes:
        pool = np.array([i for i in np.flatnonzero(labels == c) if i not in taken])
        if len(pool) < count:
            raise ValueError(f"class {c} has {len(pool)} images, {count} needed")
        out.append(np.sort(rng.choice(pool, size=count, replace=False)))
    return np.concatenate(out)


def make_cell_data(cell: Cell, train_labels: np.ndarray, test_labels: np.ndarray,
                   shots: int = 16, val_per_class: int = 50,
                   test_per_class: int = 200) -> CellData:
    """Training shots and validation images depend on the seed and the split; the test images
    are drawn again for every seed (the same for both splits of a seed, so a split's base
    test images are its swap's new ones), so the spread over seeds covers the test sample
    too. New-class validation images come from the training split, apart from the shots."""
    rng = np.random.default_rng([cell.seed, ord(cell.split)])
    train = per_class_sample(train_labels, cell.base_classes, shots, rng)
    val = per_class_sample(train_labels, cell.base_classes, val_per_class, rng, exclude=train)
    val_new = per_class_sample(train_labels, cell.new_classes, val_per_class,
                               np.random.default_rng([cell.seed, ord(cell.split), 1]))
    test_rng = np.random.default_rng([cell.seed, 12345])
    test = per_class_sample(test_labels, range(N_CLASSES), test_per_class, test_rng)
    in_base = np.isin(test_labels[test], cell.base_classes)
    return CellData(train=train, val=val, test_base=test[in_base], test_new=test[~in_base],
                    val_new=val_new)
