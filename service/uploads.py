"""Limits and error collection for uploaded training sets and images. Reading the dataset
format (folders, manifest.csv, zip) is clipfit_core.data's job; this module only bounds what
reaches it and turns every problem into one list (``Invalid``): one answer names them all."""

from __future__ import annotations

import hashlib
import io
import posixpath
import unicodedata
import zipfile

from PIL import Image

from clipfit_core.data import (
    DatasetError,
    FewShotDataset,
    from_labelled,
    read_zip,
    read_zip_images,
    try_decode,
)
from clipfit_core.prompts import classname_problems, shorten
from clipfit_core.zips import READABLE, unsafe_name
from registry.settings import Settings

from .errors import Invalid

MAX_FILENAME_CHARS = 200
ARCHIVE_SUFFIXES = (".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".7z", ".rar", ".zst")


def clean_filename(name: str | None, fallback: str) -> str:
    """A file name safe to store and show: a relative POSIX path without '.', '..' or
    control characters, at most MAX_FILENAME_CHARS characters."""
    text = "".join(c for c in (name or "") if unicodedata.category(c)[0] != "C")
    parts = [p for p in posixpath.normpath(text.replace("\\", "/")).split("/")
             if p not in ("", ".", "..")]
    cleaned = "/".join(parts)[-MAX_FILENAME_CHARS:]
    return cleaned or fallback


def size_problem(data: bytes, name: str, settings: Settings) -> str | None:
    """The problem of an image file over the byte limit (an uploaded file is read no
    further than one byte past it, so only the limit is named)."""
    if len(data) > settings.max_image_bytes:
        return f"{name}: larger than the limit of {settings.max_image_bytes} bytes per image"
    return None


def decode_image(data: bytes, name: str, settings: Settings) -> tuple[Image.Image | None,
                                                                    str | None]:
    """(RGB image, None) when it is within the byte limit and decodes within the pixel
    limit, else (None, the problem)."""
    if problem := size_problem(data, name, settings):
        return None, problem
    return try_decode(data, name, max_pixels=settings.max_image_pixels)


def from_files(files: list[tuple[str, bytes]], labels: list[str],
               classes: list[str] | None, settings: Settings, *,
               min_classes: int = 2) -> FewShotDataset:
    """Images sent one by one, each with its label (at least ``min_classes`` classes: a
    training set needs two, images added to a stored dataset may be of one)."""
    problems = []
    if not files:
        problems.append("no images: send 'images' files with one 'labels' value each, "
                        "or one 'dataset' zip")
    if len(labels) != len(files):
        problems.append(f"{len(files)} images but {len(labels)} labels: send one label per image")
    if len(files) > settings.max_images:
        problems.append(f"{len(files)} images, the limit is {settings.max_images}")
    rows = [(clean_filename(name, f"images[{i}]"), data, label.strip())
            for i, ((name, data), label) in enumerate(zip(files, labels))]
    problems += [p for name, data, _ in rows if (p := size_problem(data, name, settings))]
    if problems:
        raise Invalid(problems)
    try:
        dataset = from_labelled(rows, classes)
    except DatasetError as e:  # report the unreadable images in the same answer
        unreadable = [p for name, data, _ in rows
                      if (p := decode_image(data, name, settings)[1])]
        raise Invalid(e.problems + unreadable) from e
    return _checked(dataset, settings, min_classes)


MAX_FOLDER_DEPTH = 32  # folders in a member's path (the reader walks them recursively)


def archive_problems(archive: zipfile.ZipFile, settings: Settings) -> list[str]:
    """What makes an archive unsafe or unreadable, from its directory alone (nothing is
    decompressed): entries (all of them, folders and __MACOSX too), uncompressed size, paths,
    nested archives, encryption, compression methods."""
    entries = archive.infolist()
    problems = []
    if len(entries) > settings.max_archive_members:
        problems.append(f"dataset: {len(entries)} entries, the limit is "
                        f"{settings.max_archive_members}")
    total = sum(m.file_size for m in entries)
    if total > settings.max_request_bytes:
        problems.append(f"dataset: {total} bytes uncompressed, the limit is "
                        f"{settings.max_request_bytes}")
    if problems:
        return problems

    def named(what: str, members: list[str]) -> None:
        if members:
            problems.append(f"dataset: {what}: " + ", ".join(shorten(m) for m in members[:5])
                            + (f" and {len(members) - 5} more" if len(members) > 5 else ""))

    files = [m for m in entries if not m.is_dir()]
    named("unsafe paths", [m.filename for m in entries if unsafe_name(m.filename)])
    named(f"paths nested deeper than {MAX_FOLDER_DEPTH} folders",
          [m.filename for m in entries if m.filename.strip("/").count("/") > MAX_FOLDER_DEPTH])
    named("archives inside the archive (unpack them first)",
          [m.filename for m in files if m.filename.lower().endswith(ARCHIVE_SUFFIXES)
           and "__MACOSX" not in m.filename])
    named("encrypted members", [m.filename for m in files if m.flag_bits & 0x1])
    named("members compressed with an unsupported method",
          [m.filename for m in files if m.compress_type not in READABLE])
    return problems


def from_zip(data: bytes, classes: list[str] | None, settings: Settings, *,
             min_classes: int = 2) -> FewShotDataset:
    """A zip of one folder per class (at any depth below it, optionally under one top
    folder) or a ``manifest.csv`` of ``path,label`` rows: the archive's entries, size, paths
    and methods are checked before anything in it is read, then its classes, images and
    the sizes its members declare; each member is inflated with a running cap at
    ``max_image_bytes``, so a zip bomb costs at most about twice that limit in memory."""
    archive = _checked_archive(data, settings)
    try:
        dataset = read_zip(archive, classes, max_images=settings.max_images,
                           max_classes=settings.max_classes,
                           max_image_bytes=settings.max_image_bytes)
    except DatasetError as e:
        raise Invalid(e.problems) from e
    return _checked(dataset, settings, min_classes)


def _checked_archive(data: bytes, settings: Settings) -> zipfile.ZipFile:
    """The zip, its directory checked (``archive_problems``): nothing in it read yet."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as e:
        raise Invalid([f"dataset: not a zip archive ({type(e).__name__})"]) from e
    problems = archive_problems(archive, settings)
    if problems:
        raise Invalid(problems)
    return archive


def images_from_zip(data: bytes, settings: Settings) -> list[tuple[str, bytes]]:
    """(name, bytes) of every image in a zip of unlabelled images (to classify; folders
    are only names), sorted by name, under the same checks as a training zip: the archive's
    entries, size, paths and methods from its directory, then the image count and declared
    sizes, each member inflated with a running cap, and each distinct image decoded once
    within the pixel limit."""
    archive = _checked_archive(data, settings)
    try:
        images = read_zip_images(archive, max_images=settings.max_images,
                                 max_image_bytes=settings.max_image_bytes)
    except DatasetError as e:
        raise Invalid([f"dataset: {p}" for p in e.problems]) from e
    images = [(clean_filename(name, f"image{i}"), data) for i, (name, data) in enumerate(images)]
    problems, seen = [], set()
    for name, source in images:
        digest = hashlib.sha256(source).digest()
        if digest not in seen:
            seen.add(digest)
            if problem := decode_image(source, name, settings)[1]:
                problems.append(problem)
    if problems:
        raise Invalid(problems)
    return images


def _checked(dataset: FewShotDataset, settings: Settings,
             min_classes: int = 2) -> FewShotDataset:
    """The service's own limits on a parsed dataset; each distinct image decoded once."""
    if len(dataset) > settings.max_images:  # before decoding any of them
        raise Invalid([f"{len(dataset)} images, the limit is {settings.max_images}"])
    if len(dataset.classnames) > settings.max_classes:
        raise Invalid([(f"{len(dataset.classnames)} classes, the limit is "
                       f"{settings.max_classes}")])
    problems = []
    if len(dataset.classnames) < min_classes:
        problems.append(f"need at least {min_classes} classes, got {len(dataset.classnames)}")
    problems += classname_problems(dataset.classnames, max_count=settings.max_classes)
    seen: set[bytes] = set()
    for sample in dataset.samples:
        digest = hashlib.sha256(sample.source).digest()
        if digest in seen:
            continue
        seen.add(digest)
        _, problem = decode_image(sample.source, sample.name, settings)
        if problem:
            problems.append(problem)
    if problems:
        raise Invalid(problems)
    return dataset
