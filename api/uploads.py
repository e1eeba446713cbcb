"""Limits and error collection for uploaded training sets and images. Reading the dataset
format (folders, manifest.csv, zip) is clipfit_core.data's job; this module only bounds what
reaches it and turns every problem into one list for a single 422."""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from PIL import Image

from clipfit_core.data import (
    DatasetError,
    FewShotDataset,
    from_labelled,
    image_problem,
    read_zip,
    try_decode,
)
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
    return try_decode(data, name, max_pixels=settings.max_image_pixels)


def from_files(files: list[tuple[str, bytes]], labels: list[str],
               classes: list[str] | None, settings: Settings) -> TrainingSet:
    """Images sent one by one, each with its label."""
    problems = []
    if not files:
        problems.append("no images: send 'images' files with one 'labels' value each, "
                        "or one 'dataset' zip")
    if len(labels) != len(files):
        problems.append(f"{len(files)} images but {len(labels)} labels: send one label per image")
    if len(files) > settings.max_images:
        problems.append(f"{len(files)} images, the limit is {settings.max_images}")
    if problems:
        raise UploadError(problems)
    rows = [(name, data, label.strip()) for (name, data), label in zip(files, labels)]
    try:
        dataset = from_labelled(rows, classes)
    except DatasetError as e:  # report the unreadable images in the same answer
        unreadable = [p for name, data, _ in rows
                      if (p := try_decode(data, name, max_pixels=settings.max_image_pixels)[1])]
        raise UploadError(e.problems + unreadable) from e
    return _checked(dataset, settings)


def from_zip(data: bytes, classes: list[str] | None, settings: Settings) -> TrainingSet:
    """A zip of one folder per class (at any depth below it, optionally under one top
    folder) or a ``manifest.csv`` of ``path,label`` rows: the archive's size, member count
    and paths are checked before anything in it is read."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as e:
        raise UploadError([f"dataset: not a zip archive ({e})"]) from e
    members = [m for m in archive.infolist() if not m.is_dir()]
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
    try:
        dataset = read_zip(archive, classes)
    except DatasetError as e:
        raise UploadError(e.problems) from e
    return _checked(dataset, settings)


def _checked(dataset: FewShotDataset, settings: Settings) -> TrainingSet:
    """The service's own limits on a parsed dataset; every image decoded once."""
    if len(dataset) > settings.max_images:  # before decoding any of them
        raise UploadError([f"{len(dataset)} images, the limit is {settings.max_images}"])
    problems = []
    if len(dataset.classnames) < 2:
        problems.append(f"need at least 2 classes, got {dataset.classnames}")
    problems += [p for s in dataset.samples
                 if (p := image_problem(s, max_pixels=settings.max_image_pixels))]
    if problems:
        raise UploadError(problems)
    return TrainingSet(dataset.classnames,
                       [(s.source, s.label, s.name) for s in dataset.samples])
