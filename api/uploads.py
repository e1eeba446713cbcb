"""Validate an uploaded training set (files + labels, or a zip) before anything is stored."""

from __future__ import annotations

import csv
import io
import zipfile
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from PIL import Image, UnidentifiedImageError

from clipfit_core.data import IMAGE_SUFFIXES
from registry.settings import Settings


class UploadError(ValueError):
    """Every problem found, so the client can fix them all at once."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass
class TrainingSet:
    classnames: list[str]
    images: list[tuple[bytes, int, str]] = field(default_factory=list)  # (bytes, label, name)


def decode_image(data: bytes, name: str, settings: Settings) -> tuple[Image.Image | None,
                                                                    str | None]:
    """(RGB image, None) when it decodes within the pixel limit, else (None, the problem)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > settings.max_image_pixels:
                return None, (f"{name}: {im.width}x{im.height} exceeds "
                              f"{settings.max_image_pixels} pixels")
            return im.convert("RGB"), None
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
        return None, f"{name}: not a readable image ({e})"


def check_image(data: bytes, name: str, settings: Settings) -> str | None:
    """None when the image decodes within the pixel limit, else the problem."""
    return decode_image(data, name, settings)[1]


def from_files(files: list[tuple[str, bytes]], labels: list[str],
               classes: list[str] | None, settings: Settings) -> TrainingSet:
    problems = []
    if not files:
        problems.append("no images: send 'images' files with one 'labels' value each, "
                        "or one 'dataset' zip")
    if len(labels) != len(files):
        problems.append(f"{len(files)} images but {len(labels)} labels: send one label per image")
    if problems:
        raise UploadError(problems)
    return _build([(name, data, label.strip()) for (name, data), label in zip(files, labels)],
                  classes, settings)


def from_zip(data: bytes, classes: list[str] | None, settings: Settings) -> TrainingSet:
    """One folder per class (``class/x.png``, optionally under one top folder), or a
    ``manifest.csv`` of ``path,label`` rows."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as e:
        raise UploadError([f"dataset: not a zip archive ({e})"]) from e
    members = [m for m in archive.infolist() if not m.is_dir()
               and not PurePosixPath(m.filename).name.startswith(".")
               and "__MACOSX" not in m.filename]
    problems = []
    if len(members) > settings.max_archive_members:
        problems.append(f"dataset: {len(members)} files, the limit is "
                        f"{settings.max_archive_members}")
    total = sum(m.file_size for m in members)
    if total > settings.max_request_bytes:
        problems.append(f"dataset: {total} bytes uncompressed, the limit is "
                        f"{settings.max_request_bytes}")
    unsafe = [m.filename for m in members
              if m.filename.startswith("/") or ".." in PurePosixPath(m.filename).parts]
    if unsafe:
        problems.append(f"dataset: unsafe paths {unsafe[:5]}")
    if problems:
        raise UploadError(problems)
    by_name = {m.filename: m for m in members}
    manifest = next((m for m in members if PurePosixPath(m.filename).name == "manifest.csv"), None)
    rows = []
    if manifest is not None:
        root = PurePosixPath(manifest.filename).parent
        text = archive.read(manifest).decode("utf-8", errors="replace")
        for n, row in enumerate(csv.reader(io.StringIO(text)), start=1):
            if not row or (n == 1 and [c.strip().lower() for c in row[:2]] == ["path", "label"]):
                continue
            if len(row) != 2:
                problems.append(f"manifest.csv line {n}: expected 'path,label'")
                continue
            path = str(root / row[0].strip()) if str(root) != "." else row[0].strip()
            if path not in by_name:
                problems.append(f"manifest.csv line {n}: {row[0]!r} is not in the archive")
                continue
            rows.append((path, archive.read(by_name[path]), row[1].strip()))
    else:
        images = [m for m in members if PurePosixPath(m.filename).suffix.lower() in IMAGE_SUFFIXES]
        parts = [PurePosixPath(m.filename).parts for m in images]
        strip = 1 if parts and all(len(p) == 3 for p in parts) and \
            len({p[0] for p in parts}) == 1 else 0
        for m, p in zip(images, parts):
            if len(p) - strip != 2:
                problems.append(f"{m.filename}: expected CLASS/FILE (one folder per class)")
                continue
            rows.append((m.filename, archive.read(m), p[strip].replace("_", " ")))
    if problems:
        raise UploadError(problems)
    return _build(rows, classes, settings)


def _build(rows: list[tuple[str, bytes, str]], classes: list[str] | None,
           settings: Settings) -> TrainingSet:
    problems = []
    if len(rows) > settings.max_images:
        problems.append(f"{len(rows)} images, the limit is {settings.max_images}")
    names = classes or sorted({label for _, _, label in rows})
    index = {c: i for i, c in enumerate(names)}
    if len(index) != len(names):
        problems.append(f"classes: duplicate names in {names}")
    if len(names) < 2:
        problems.append(f"need at least 2 classes, got {names}")
    unknown = sorted({label for _, _, label in rows if label not in index})
    if unknown:
        problems.append(f"labels not among the classes: {unknown}")
    counts = dict.fromkeys(names, 0)
    for _, _, label in rows:
        if label in counts:
            counts[label] += 1
    empty = [c for c, n in counts.items() if n == 0]
    if empty:
        problems.append(f"classes without images: {empty}")
    problems += [p for name, data, _ in rows if (p := check_image(data, name, settings))]
    if problems:
        raise UploadError(problems)
    return TrainingSet(names, [(data, index[label], name) for name, data, label in rows])
