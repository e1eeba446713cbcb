"""Few-shot image datasets: one reader for a folder per class, a CSV manifest, or a zip of
either; k-shot sampling, splits, and the one image decoder.

A dataset is a list of ``Sample`` (an image source, a class index and a name) plus its class
names. Image sources are paths, raw encoded bytes or decoded PIL images, so the same code
serves files on disk, uploads, images stored in a database, and images made in memory.

One set of rules, whatever the container (a folder on disk, a zip file or zip bytes, or
labelled uploads):
- a ``manifest.csv`` (``path,label`` rows, optional header) at the root wins; paths are
  relative to it (absolute paths only on disk);
- otherwise every sub-folder is a class (``_`` reads as a space) and every image file below
  it, at any depth, is one of its samples; hidden entries and ``__MACOSX`` are skipped;
- a root holding nothing but one folder (a zipped folder) is read as that folder;
- classes are in the order given, else sorted by name; within a class, samples are sorted by
  name (their path below the root, or the uploaded file name), so the same images give the
  same dataset, and the same delta, however they arrive.
"""

from __future__ import annotations

import csv
import hashlib
import io
import random
import re
import zipfile
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from .prompts import classname_problems, shorten
from .zips import MemberError, MemberTooLarge, read_member, unsafe_name

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
MANIFEST_NAME = "manifest.csv"
ImageSource = str | bytes | Image.Image


class DatasetError(ValueError):
    """A dataset is malformed; ``problems`` names every offending class or file."""

    def __init__(self, problems: str | Sequence[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


@dataclass(frozen=True)
class Sample:
    source: ImageSource  # a file path, the encoded image, or a decoded image
    label: int
    name: str = ""  # the path below the dataset's root, or the uploaded file's name

    def __post_init__(self):
        if not self.name:
            object.__setattr__(self, "name", _describe(self.source))


def _describe(source: ImageSource) -> str:
    if isinstance(source, str):
        return source
    if isinstance(source, Image.Image):
        return f"<image {source.size[0]}x{source.size[1]}>"
    return f"<{len(source)} bytes>"


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


class ImageTooLargeError(ValueError):
    """An image has more pixels than allowed (a decompression bomb, or just too big)."""


def decode_image(source: ImageSource | Path, *, max_pixels: int | None = None) -> Image.Image:
    """Decode an image from a path or bytes (or take a PIL image) into RGB: the only image
    decoder of the project. With ``max_pixels``, the size is checked from the header before
    any pixel is decoded. Raises ``OSError``/``ValueError`` for unreadable data."""
    if isinstance(source, Image.Image):
        return source if source.mode == "RGB" else source.convert("RGB")
    fp = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    with Image.open(fp) as im:
        if max_pixels is not None and im.width * im.height > max_pixels:
            raise ImageTooLargeError(f"{im.width}x{im.height} exceeds {max_pixels} pixels")
        return im.convert("RGB")


def open_image(source: ImageSource | Path) -> Image.Image:
    """``decode_image`` without a size limit (local files the user chose)."""
    return decode_image(source)


def try_decode(source: ImageSource, name: str, *, max_pixels: int | None = None
               ) -> tuple[Image.Image | None, str | None]:
    """(RGB image, None), or (None, 'name: reason') when it does not decode (within
    ``max_pixels``)."""
    try:
        return decode_image(source, max_pixels=max_pixels), None
    except ImageTooLargeError as e:
        return None, f"{name}: {e}"
    except UnidentifiedImageError:
        return None, f"{name}: not a readable image (unknown image format)"
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as e:
        return None, f"{name}: not a readable image ({_plain_reason(e)})"


def _plain_reason(error: Exception) -> str:
    """An exception's message without object reprs, at most 120 characters."""
    text = _REPR.sub("the image", str(error)) or type(error).__name__
    return text if len(text) <= 120 else text[:117] + "..."


_REPR = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")


def image_problem(sample: Sample, *, max_pixels: int | None = None) -> str | None:
    """None when the sample's image decodes (within ``max_pixels``), else 'name: reason'."""
    return try_decode(sample.source, sample.name, max_pixels=max_pixels)[1]


def from_labelled(rows: Iterable[tuple[str, ImageSource, str]],
                  classnames: Sequence[str] | None = None) -> FewShotDataset:
    """A dataset from ``(name, source, label)`` rows: classes in the order given, else
    sorted; samples sorted by (class, name). Raises DatasetError naming every problem
    (labels not among the classes, duplicate class names, classes without images)."""
    rows = list(rows)
    names = list(classnames) if classnames is not None else sorted({lb for _, _, lb in rows})
    problems = classname_problems(names)
    index = {c: i for i, c in enumerate(names)}
    unknown = sorted({label for _, _, label in rows if label not in index})
    if unknown:
        problems.append("labels not among the classes: " +
                        ", ".join(shorten(u) for u in unknown[:10]) +
                        (f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""))
    samples = sorted((Sample(source, index[label], name) for name, source, label in rows
                      if label in index), key=_order)
    dataset = FewShotDataset(names, samples)
    empty = [c for c, n in dataset.counts().items() if n == 0]
    if empty:
        problems.append("classes without images: " + ", ".join(shorten(c) for c in empty[:10])
                        + (f" and {len(empty) - 10} more" if len(empty) > 10 else ""))
    if problems:
        raise DatasetError(problems)
    return dataset


def _order(sample: Sample) -> tuple:
    """Class, then name; two uploads of one name are told apart by their content, so the
    order never depends on how they arrived."""
    content = hashlib.sha256(sample.source).hexdigest() \
        if isinstance(sample.source, (bytes, bytearray)) else ""
    return sample.label, sample.name, content


def load_dataset(location: str | Path, classnames: Sequence[str] | None = None) -> FewShotDataset:
    """A dataset on disk: a folder (per-class sub-folders or a ``manifest.csv``), a ``.csv``
    manifest, or a ``.zip`` of either. Folder images stay paths (decoded when used)."""
    location = Path(location)
    if location.is_file() and location.suffix.lower() == ".zip":
        try:
            archive = zipfile.ZipFile(location)
        except zipfile.BadZipFile as e:
            raise DatasetError(f"{str(location)!r} is not a zip archive ({e})") from e
        with archive:
            return read_zip(archive, classnames)
    if location.is_file():
        return _read_manifest(location, location.parent, classnames)
    if not location.is_dir():
        raise DatasetError(f"dataset {str(location)!r} does not exist")
    return _read_tree(location, classnames, where=str(location))


def read_zip(archive: zipfile.ZipFile, classnames: Sequence[str] | None = None, *,
             max_images: int | None = None, max_classes: int | None = None,
             max_image_bytes: int | None = None) -> FewShotDataset:
    """A dataset from a zip archive, by the same rules as a folder; every image is read once
    into memory (bytes), however many manifest rows name it.

    The archive's directory is indexed once, and before any member is read: images (or
    manifest rows) past ``max_images``, classes past ``max_classes`` and members declaring
    more than ``max_image_bytes`` are refused. Each member is then inflated with a running
    cap at ``max_image_bytes`` and at the size it declares (``zips.read_member``). Entry
    names must be checked for safe paths by the caller (``zips.unsafe_name``)."""
    if max_image_bytes is not None:
        big = [f"{shorten(m.filename)}: {m.file_size} bytes uncompressed, the limit is "
               f"{max_image_bytes}" for m in archive.infolist()
               if m.file_size > max_image_bytes and not m.is_dir() and _may_be_read(m.filename)]
        if big:
            raise DatasetError(big[:10] + ([f"... and {len(big) - 10} more"]
                                           if len(big) > 10 else []))

    def read(entry: _ZipEntry, name: str) -> bytes:
        try:
            return read_member(archive, entry.info, max_image_bytes)
        except MemberTooLarge as e:
            raise DatasetError(f"{shorten(name)}: {e}") from e
        except MemberError as e:  # bad CRC, corrupt stream, encrypted, unknown method
            raise DatasetError(f"{shorten(name)}: cannot be read from the archive ({e})") from e

    return _read_tree(_ZipEntry.index(archive), classnames, where="the archive", read=read,
                      max_images=max_images, max_classes=max_classes)


def read_zip_images(archive: zipfile.ZipFile, *, max_images: int | None = None,
                    max_image_bytes: int | None = None) -> list[tuple[str, bytes]]:
    """The images of a zip of unlabelled images, at any depth (folders are only names),
    as (path in the archive, bytes), sorted by path; hidden entries and ``__MACOSX`` are
    skipped. The same limits as :func:`read_zip`: images and declared sizes are checked from
    the directory before any member is read, then each member is inflated with a running
    cap at ``max_image_bytes``. Entry names must be checked for safe paths by the caller."""
    found = list(_walk(_ZipEntry.index(archive), ""))
    if not found:
        raise DatasetError(f"the archive holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    _too_many(len(found), max_images, "images")
    if max_image_bytes is not None:
        big = [f"{shorten(name)}: {entry.info.file_size} bytes uncompressed, the limit is "
               f"{max_image_bytes}" for entry, name in found
               if entry.info.file_size > max_image_bytes]
        if big:
            raise DatasetError(big[:10] + ([f"... and {len(big) - 10} more"]
                                           if len(big) > 10 else []))
    images, problems = [], []
    for entry, name in found:
        name = name.lstrip("/")
        try:
            images.append((name, read_member(archive, entry.info, max_image_bytes)))
        except MemberTooLarge as e:
            problems.append(f"{shorten(name)}: {e}")
        except MemberError as e:
            problems.append(f"{shorten(name)}: cannot be read from the archive ({e})")
    if problems:
        raise DatasetError(problems)
    return images


def _may_be_read(path: str) -> bool:
    """An entry the reader may read: an image or a manifest, not hidden nor ``__MACOSX``."""
    parts = path.split("/")
    return all(not p.startswith(".") and p != "__MACOSX" for p in parts) and \
        (Path(path).suffix.lower() in IMAGE_SUFFIXES or parts[-1] == MANIFEST_NAME)


class _ZipEntry:
    """A folder or file of a zip archive, walked like a ``pathlib.Path``. The whole tree is
    indexed in one pass over the directory (``zipfile.Path`` lists every entry of the
    archive at each step of a walk: quadratic, 40 s for 2,000 class folders)."""

    def __init__(self, name: str, at: str, folder: bool = False):
        self.name, self.at, self.folder = name, at, folder
        self.info: zipfile.ZipInfo | None = None
        self.children: dict[str, _ZipEntry] = {}

    @classmethod
    def index(cls, archive: zipfile.ZipFile) -> _ZipEntry:
        root = cls("", "", folder=True)
        for info in archive.infolist():
            parts = [p for p in info.filename.split("/") if p not in ("", ".")]
            node = root
            for depth, part in enumerate(parts, start=1):
                node.folder = True
                node = node.children.setdefault(part, cls(part, "/".join(parts[:depth])))
            if info.is_dir():
                node.folder = True
            elif parts:
                node.info = info
        return root

    def is_dir(self) -> bool:
        return self.folder

    def is_file(self) -> bool:
        return self.info is not None and not self.folder

    def iterdir(self):
        return iter(list(self.children.values()))

    def __truediv__(self, path: str) -> _ZipEntry:
        node = self
        for part in path.split("/"):
            if part not in ("", "."):
                node = node.children.get(part) or _ZipEntry(part, "")  # missing: neither
        return node


def _visible(entry) -> bool:
    return not entry.name.startswith(".") and entry.name != "__MACOSX"


def _is_image(entry) -> bool:
    return Path(entry.name).suffix.lower() in IMAGE_SUFFIXES


def _relevant(folder) -> list:
    """What the reader looks at in a folder: sub-folders, images and a manifest."""
    return [e for e in folder.iterdir() if _visible(e) and
            (e.is_dir() or _is_image(e) or e.name == MANIFEST_NAME)]


def _too_many(count: int, limit: int | None, what: str) -> None:
    if limit is not None and count > limit:
        raise DatasetError(f"{count} {what}, the limit is {limit}")


def _read_tree(root, classnames, *, where: str, read: Callable | None = None,
               max_images: int | None = None, max_classes: int | None = None
               ) -> FewShotDataset:
    """``root`` is a ``pathlib.Path`` (on disk: images stay paths) or a ``_ZipEntry``
    (``read(entry, name)`` gives a member's bytes): both walk the same way. Classes and
    images are counted before any image is read."""
    entries = _relevant(root)
    if len(entries) == 1 and entries[0].is_dir():
        inner = _relevant(entries[0])
        if any(e.name == MANIFEST_NAME for e in inner) or \
                (inner and all(e.is_dir() for e in inner)):
            root, entries = entries[0], inner  # a zipped (or nested) folder: read inside it
    if (root / MANIFEST_NAME).is_file():
        return _read_manifest(root / MANIFEST_NAME, root, classnames, read=read,
                              max_rows=max_images, max_classes=max_classes)
    folders = sorted((e for e in entries if e.is_dir()), key=lambda e: e.name)
    if not folders:
        raise DatasetError(f"{where} has no class sub-folders (nor a {MANIFEST_NAME})")
    stray = sorted(e.name for e in entries if not e.is_dir())
    if stray:
        raise DatasetError(f"images outside any class folder in {where}: {stray[:10]}")
    by_class: dict[str, list] = defaultdict(list)  # 'a_b' and 'a b' are one class
    for folder in folders:
        by_class[_classname(folder.name)].append(folder)
    _too_many(len(by_class), max_classes, "classes")
    found = [(path, name, classname) for classname, group in by_class.items()
             for folder in group for path, name in _walk(folder, folder.name)]
    _too_many(len(found), max_images, "images")
    rows = [(name, str(path) if read is None else read(path, name), classname)
            for path, name, classname in found]
    # every class folder is a class, even an empty one (which is then refused)
    return from_labelled(rows, classnames if classnames is not None else sorted(by_class))


def _walk(folder, prefix: str):
    """(path, name below the root) of every image file under ``folder``, sorted by name."""
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not _visible(entry):
            continue
        name = f"{prefix}/{entry.name}"
        if entry.is_dir():
            yield from _walk(entry, name)
        elif _is_image(entry):
            yield entry, name


def _read_manifest(manifest, root, classnames, *, read: Callable | None = None,
                   max_rows: int | None = None, max_classes: int | None = None
                   ) -> FewShotDataset:
    """``path,label`` rows; paths relative to ``root`` (a zip member or a file on disk).
    Rows and classes are counted before any image is read."""
    problems, listed, rows, members = [], [], [], {}
    text = Path(manifest).read_text(encoding="utf-8") if read is None \
        else read(manifest, MANIFEST_NAME).decode("utf-8", errors="replace")
    lines = [row for row in csv.reader(io.StringIO(text)) if any(c.strip() for c in row)]
    if max_rows is not None and len(lines) > max_rows + 1:  # + 1: a header row
        raise DatasetError(f"{MANIFEST_NAME} has {len(lines)} rows, the limit is {max_rows}")
    for lineno, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or all(not c.strip() for c in row):
            continue
        if lineno == 1 and [c.strip().lower() for c in row[:2]] == ["path", "label"]:
            continue
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            problems.append(f"{MANIFEST_NAME} line {lineno}: expected 'path,label', got "
                            f"{shorten(','.join(row))}")
            continue
        listed.append((lineno, row[0].strip(), row[1].strip()))
    if classnames is None:
        _too_many(len({label for _, _, label in listed}), max_classes, "classes")
    for lineno, name, label in listed:
        if read is None:
            path = Path(name) if Path(name).is_absolute() else Path(root) / name
            rows.append((name, str(path), label))
            continue
        member = root / name
        if unsafe_name(name) or not member.is_file():
            problems.append(f"{MANIFEST_NAME} line {lineno}: {shorten(name)} is not in the archive")
            continue
        if member.at not in members:  # rows naming one member share one copy
            try:
                members[member.at] = read(member, name)
            except DatasetError as e:
                problems += e.problems
                continue
        rows.append((name, members[member.at], label))
    if problems:
        raise DatasetError(problems)
    return from_labelled(rows, classnames)


def _classname(folder: str) -> str:
    return folder.replace("_", " ")


def find_unreadable(samples: Sequence[Sample]) -> list[str]:
    """Every sample whose image cannot be decoded, as 'name: reason'."""
    return [p for s in samples if not isinstance(s.source, Image.Image)
            and (p := image_problem(s))]


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
    return dataset.subset(sorted(picked, key=_order))


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
