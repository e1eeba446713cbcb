"""Few-shot image datasets: a folder per class or a CSV manifest, k-shot sampling, splits.

A dataset is a list of ``Sample`` (an image source and a class index) plus its class names.
Image sources are paths, raw encoded bytes or decoded PIL images, so the same code serves
files on disk, images stored in a database, and images made in memory.
"""

from __future__ import annotations

import csv
import io
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


class DatasetError(ValueError):
    """A dataset is malformed; the message names every offending class or file."""


@dataclass(frozen=True)
class Sample:
    source: str | bytes | Image.Image  # a file path, the encoded image, or a decoded image
    label: int

    def name(self) -> str:
        if isinstance(self.source, str):
            return self.source
        if isinstance(self.source, Image.Image):
            return f"<image {self.source.size[0]}x{self.source.size[1]}>"
        return f"<{len(self.source)} bytes>"


@dataclass
class FewShotDataset:
    classnames: list[str]
    samples: list[Sample]

    def __len__(self) -> int:
        return len(self.samples)

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(self.classnames, 0)
        for s in self.samples:
            counts[self.classnames[s.label]] += 1
        return counts

    def subset(self, samples: Sequence[Sample]) -> FewShotDataset:
        return FewShotDataset(list(self.classnames), list(samples))


def open_image(source: str | bytes | Path | Image.Image) -> Image.Image:
    """Decode an image from a path or bytes (or take a PIL image) into RGB."""
    if isinstance(source, Image.Image):
        return source if source.mode == "RGB" else source.convert("RGB")
    fp = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    with Image.open(fp) as im:
        return im.convert("RGB")


def load_image_folder(root: str | Path, classnames: Sequence[str] | None = None) -> FewShotDataset:
    """One sub-folder per class; the folder name is the class name (underscores become spaces).

    Args:
        root: the dataset folder.
        classnames: an explicit class order; default is sorted folder names.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {str(root)!r} does not exist")
    folders = {_classname(p.name): p for p in sorted(root.iterdir()) if p.is_dir()
               and not p.name.startswith(".")}
    if not folders:
        raise DatasetError(f"dataset folder {str(root)!r} has no class sub-folders")
    names = list(classnames) if classnames is not None else list(folders)
    unknown = [c for c in names if c not in folders]
    if unknown:
        raise DatasetError(f"no folder for classes {unknown} in {str(root)!r}")
    samples = []
    for label, name in enumerate(names):
        for path in sorted(folders[name].rglob("*")):
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                samples.append(Sample(str(path), label))
    dataset = FewShotDataset(names, samples)
    _check_nonempty(dataset, str(root))
    return dataset


def load_manifest(path: str | Path, classnames: Sequence[str] | None = None) -> FewShotDataset:
    """A CSV of ``path,label`` rows (an optional header row is skipped); relative paths are
    taken from the manifest's folder. Class order: ``classnames`` or first appearance."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"manifest {str(path)!r} does not exist")
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        for lineno, row in enumerate(csv.reader(f), start=1):
            if not row or all(not c.strip() for c in row):
                continue
            if lineno == 1 and [c.strip().lower() for c in row[:2]] == ["path", "label"]:
                continue
            if len(row) != 2 or not row[0].strip() or not row[1].strip():
                raise DatasetError(f"{path.name} line {lineno}: expected 'path,label', got {row}")
            rows.append((row[0].strip(), row[1].strip()))
    names = list(classnames) if classnames is not None else list(dict.fromkeys(l for _, l in rows))
    index = {c: i for i, c in enumerate(names)}
    unknown = sorted({label for _, label in rows if label not in index})
    if unknown:
        raise DatasetError(f"manifest {path.name} has labels not among the classes: {unknown}")
    samples = [Sample(str((path.parent / p) if not Path(p).is_absolute() else Path(p)), index[l])
               for p, l in rows]
    dataset = FewShotDataset(names, samples)
    _check_nonempty(dataset, path.name)
    return dataset


def load_dataset(location: str | Path, classnames: Sequence[str] | None = None) -> FewShotDataset:
    """A folder per class, or a CSV manifest (a ``.csv`` file, or a folder holding
    ``manifest.csv``)."""
    location = Path(location)
    if location.is_file():
        return load_manifest(location, classnames)
    if (location / "manifest.csv").is_file():
        return load_manifest(location / "manifest.csv", classnames)
    return load_image_folder(location, classnames)


def _classname(folder: str) -> str:
    return folder.replace("_", " ")


def _check_nonempty(dataset: FewShotDataset, where: str) -> None:
    empty = [c for c, n in dataset.counts().items() if n == 0]
    if empty:
        raise DatasetError(f"classes without images in {where}: {empty}")


def find_unreadable(samples: Sequence[Sample]) -> list[str]:
    """Every sample whose image cannot be decoded, as 'name: reason'."""
    bad = []
    for s in samples:
        if isinstance(s.source, Image.Image):
            continue  # already decoded
        try:
            fp = io.BytesIO(s.source) if isinstance(s.source, bytes) else s.source
            with Image.open(fp) as im:
                im.load()
        except (OSError, UnidentifiedImageError, ValueError) as e:
            bad.append(f"{s.name()}: {e}")
    return bad


def check_readable(dataset: FewShotDataset) -> None:
    """Raise DatasetError naming every image that does not decode."""
    bad = find_unreadable(dataset.samples)
    if bad:
        raise DatasetError(f"{len(bad)} unreadable image(s): " + "; ".join(bad))


def sample_few_shot(dataset: FewShotDataset, shots: int, seed: int = 0) -> FewShotDataset:
    """Up to ``shots`` images per class, drawn with ``seed`` (all of a class when it has fewer)."""
    if shots < 1:
        raise DatasetError(f"shots must be at least 1, got {shots}")
    rng = random.Random(seed)
    picked = []
    for items in _by_class(dataset.samples).values():
        picked += rng.sample(items, min(shots, len(items)))
    return dataset.subset(sorted(picked, key=lambda s: (s.label, s.name())))


def split_train_val(
    dataset: FewShotDataset, val_fraction: float, seed: int = 0
) -> tuple[FewShotDataset, FewShotDataset]:
    """Stratified split; each class keeps at least one training image, and gives
    ``round(n * val_fraction)`` to validation only when it has two or more."""
    if not 0 <= val_fraction < 1:
        raise DatasetError(f"val_fraction must be in [0, 1), got {val_fraction}")
    rng = random.Random(seed)
    train, val = [], []
    for items in _by_class(dataset.samples).values():
        items = list(items)
        rng.shuffle(items)
        n_val = min(round(len(items) * val_fraction), len(items) - 1)
        val += items[:n_val]
        train += items[n_val:]
    return dataset.subset(train), dataset.subset(val)


def _by_class(samples: Sequence[Sample]) -> dict[int, list[Sample]]:
    groups: dict[int, list[Sample]] = defaultdict(list)
    for s in samples:
        groups[s.label].append(s)
    return dict(sorted(groups.items()))


class ImageDataset(torch.utils.data.Dataset):
    """Items are (transformed image tensor, label).

    Images are decoded on access, or all at once up front with ``preload`` (worth it when the
    same few images are augmented epoch after epoch in one process).
    """

    def __init__(self, samples: Sequence[Sample], transform: Callable, *, preload: bool = False):
        self.samples = list(samples)
        self.transform = transform
        self.images = [open_image(s.source) for s in self.samples] if preload else None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        image = self.images[i] if self.images is not None else open_image(self.samples[i].source)
        return self.transform(image), self.samples[i].label
