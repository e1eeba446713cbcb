"""The paper's own protocols on the 11 CoOp datasets, for users with the data, ViT-B-16
weights and a GPU (it cannot run on this project's offline CPU machines).

Reads the CoOp / Dassl layout (the image folders plus CoOp's ``split_zhou_*.json`` split
files; FGVCAircraft's ``images_variant_*.txt``; ImageNet's ``classnames.txt`` + class
folders). For each dataset and seed:

- **base2new**: the classes split in halves (base: the first ceil(n/2) labels, as CoCoOp's
  ``subsample_classes``); ClipFit trains on the shots of the base classes (lambda 8) and is
  tested on base accuracy, new-class accuracy (zero-shot prompts through the tuned model)
  and their harmonic mean;
- **fewshot**: ClipFit trains on the shots of all classes (lambda 2; 8 on DTD and SUN397, as
  the reference) and is tested on all classes.

Both are reported beside zero-shot, per dataset and on average, as the mean and the
(population) standard deviation over seeds. Epochs are the reference's: 10 for ImageNet and
Food101, 100 for the others.

The training shots of (shots, seed) come from CoOp's ``<dataset>/split_fewshot/
shot_{shots}-seed_{seed}.pkl`` when that file exists (its absolute paths re-rooted under the
local image folder; only Dassl ``Datum`` objects are unpickled, nothing else), so the runs
use the very shots of CoOp-family papers; otherwise they are drawn with the seed.

Every delta is saved under ``OUT/deltas/<dataset>/<protocol>-seed<seed>/``. After each
dataset, ``OUT/base2new.json`` and ``OUT/base2new.md`` are rewritten (atomically); with
``--resume`` the (dataset, protocol, seed) runs already in ``base2new.json`` are skipped, and
a delta saved by an interrupted run is reused instead of retrained. The test images of a
dataset are decoded once, by ``--workers`` loader processes, and go through zero-shot CLIP and
every newly trained delta batch by batch: memory holds one batch, not the test set.

    python -m bench.base2new --root DATA --model ViT-B-16:openai --out results/b2n
        [--protocol base2new|fewshot|both] [--datasets oxford_pets,dtd] [--seeds 1,2,3]
        [--shots 16] [--epochs N] [--lambda 8] [--fewshot-lambda L] [--workers W]
        [--eval-batch-size 128] [--resume]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pickle
import random
import re
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError

from clipfit_core.classify import class_text_features, image_features, resolve_templates
from clipfit_core.data import FewShotDataset, Sample, open_image
from clipfit_core.delta import Delta, DeltaError, applied
from clipfit_core.evaluate import accuracy, harmonic_mean
from clipfit_core.recipes import PAPER
from clipfit_core.train import TrainConfig, train_clipfit

PROTOCOLS = ("base2new", "fewshot")
REPORT_NAME = "base2new"
# What a results file's runs depend on: --resume refuses a file written with other values.
RUN_SETTINGS = ("model", "fingerprint", "shots", "epochs", "lambda", "fewshot_lambda")


@dataclass(frozen=True)
class DatasetSpec:
    folder: str  # under the data root, as in CoOp's DATASETS.md
    images: str  # image folder inside it
    kind: str  # "zhou" (split_zhou_*.json), "fgvc" (variant txt files), "imagenet"
    split_file: str = ""
    template: str = "default"  # a clipfit_core.classify template name
    epochs: int = 100  # the reference's epochs: 10 for the large sets
    fewshot_lambda: float = 2.0  # the reference's few-shot lambda: 8 on DTD and SUN397


DATASETS: dict[str, DatasetSpec] = {
    "imagenet": DatasetSpec("imagenet", "images", "imagenet", template="imagenet", epochs=10),
    "caltech101": DatasetSpec("caltech-101", "101_ObjectCategories", "zhou",
                              "split_zhou_Caltech101.json", "caltech101"),
    "oxford_pets": DatasetSpec("oxford_pets", "images", "zhou", "split_zhou_OxfordPets.json",
                               "oxford_pets"),
    "stanford_cars": DatasetSpec("stanford_cars", "", "zhou", "split_zhou_StanfordCars.json",
                                 "stanford_cars"),
    "flowers102": DatasetSpec("oxford_flowers", "jpg", "zhou", "split_zhou_OxfordFlowers.json",
                              "flowers102"),
    "food101": DatasetSpec("food-101", "images", "zhou", "split_zhou_Food101.json", "food101",
                           epochs=10),
    "fgvc_aircraft": DatasetSpec("fgvc_aircraft", "images", "fgvc", template="fgvc_aircraft"),
    "sun397": DatasetSpec("sun397", "SUN397", "zhou", "split_zhou_SUN397.json", "sun397",
                          fewshot_lambda=8.0),
    "dtd": DatasetSpec("dtd", "images", "zhou", "split_zhou_DescribableTextures.json", "dtd",
                       fewshot_lambda=8.0),
    "eurosat": DatasetSpec("eurosat", "2750", "zhou", "split_zhou_EuroSAT.json", "eurosat"),
    "ucf101": DatasetSpec("ucf101", "UCF-101-midframes", "zhou", "split_zhou_UCF101.json",
                          "ucf101"),
}


@dataclass
class Item:
    path: str
    label: int
    classname: str


def read_dataset(root: Path, name: str) -> dict[str, list[Item]]:
    """{"train": [...], "val": [...], "test": [...]} in the dataset's own label space."""
    spec = DATASETS[name]
    base = root / spec.folder
    image_dir = base / spec.images
    if not base.is_dir():
        raise FileNotFoundError(f"{name}: folder {base} not found (see CoOp's DATASETS.md)")
    if spec.kind == "zhou":
        split = json.loads((base / spec.split_file).read_text())
        return {part: [Item(str(image_dir / p), int(y), c) for p, y, c in split[part]]
                for part in ("train", "val", "test")}
    if spec.kind == "fgvc":
        names = [l.strip() for l in (base / "variants.txt").read_text().splitlines() if l.strip()]
        index = {n: i for i, n in enumerate(names)}
        out = {}
        for part in ("train", "val", "test"):
            items = []
            for line in (base / f"images_variant_{part}.txt").read_text().splitlines():
                if line.strip():
                    image, variant = line.strip().split(" ", 1)
                    items.append(Item(str(image_dir / f"{image}.jpg"), index[variant], variant))
            out[part] = items
        return out
    # imagenet: classnames.txt ("wnid name" per line), images/train|val/<wnid>/*
    classes = [l.strip().split(" ", 1) for l in (base / "classnames.txt").read_text()
               .splitlines() if l.strip()]
    out = {}
    for part, folder in (("train", "train"), ("test", "val")):
        out[part] = [Item(str(p), y, name) for y, (wnid, name) in enumerate(classes)
                     for p in sorted((image_dir / folder / wnid).glob("*"))]
    out["val"] = out["test"]
    return out


def subsample_classes(items: list[Item], which: str) -> tuple[list[str], list[Item]]:
    """CoCoOp's rule: sorted labels, base = the first ceil(n/2), new = the rest; relabelled
    0..k-1. Returns (class names in label order, items)."""
    labels = sorted({i.label for i in items})
    half = math.ceil(len(labels) / 2)
    chosen = labels[:half] if which == "base" else labels[half:]
    relabel = {y: k for k, y in enumerate(chosen)}
    kept = [Item(i.path, relabel[i.label], i.classname) for i in items if i.label in relabel]
    names = {i.label: i.classname.replace("_", " ") for i in kept}
    return [names[k] for k in range(len(chosen))], kept


def few_shot(items: list[Item], shots: int, seed: int) -> list[Item]:
    """``shots`` items per label drawn with ``seed`` (all of a smaller class). Labels are
    drawn in sorted order from one generator, so the base classes' shots are the same
    whether the new classes are present or not."""
    rng = random.Random(seed)
    by_label = defaultdict(list)
    for i in items:
        by_label[i.label].append(i)
    return [x for y in sorted(by_label) for x in
            rng.sample(by_label[y], min(shots, len(by_label[y])))]


# --- CoOp's few-shot split files ------------------------------------------------------------

DASSL_DATUM = ("dassl.data.datasets.base_dataset", "Datum")


class SplitFileError(ValueError):
    """A CoOp few-shot split file is unreadable, hostile, or does not fit the dataset."""


class Datum:
    """Dassl's ``Datum`` as unpickled here (no Dassl needed): unpickling only restores its
    attributes ``_impath``, ``_label``, ``_domain``, ``_classname``."""

    @property
    def impath(self):
        return self.__dict__.get("_impath")

    @property
    def label(self):
        return self.__dict__.get("_label")


class _DatumOnlyUnpickler(pickle.Unpickler):
    """A pickle runs whatever globals it names; this unpickler resolves one: Dassl's Datum."""

    def find_class(self, module: str, name: str):
        if (module, name) == DASSL_DATUM:
            return Datum
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: a CoOp few-shot split holds only "
            f"{'.'.join(DASSL_DATUM)} objects")


def split_fewshot_path(root: Path, name: str, shots: int, seed: int) -> Path:
    """Where CoOp saves the few-shot subset of (shots, seed)."""
    return root / DATASETS[name].folder / "split_fewshot" / f"shot_{shots}-seed_{seed}.pkl"


def read_split_fewshot(path: Path) -> list[tuple[str, int]]:
    """(image path as written, label) of each training shot in a CoOp few-shot pickle
    (``{"train": [Datum, ...], "val": [...]}``). Raises SplitFileError naming the file."""
    try:
        with open(path, "rb") as f:
            data = _DatumOnlyUnpickler(f).load()
    except Exception as e:  # hostile or corrupt input: whatever it raises, name the file
        raise SplitFileError(f"{path}: not a CoOp few-shot split ({e})") from e
    train = data.get("train") if isinstance(data, dict) else None
    if not isinstance(train, list) or not all(
            isinstance(d, Datum) and isinstance(d.impath, str) and isinstance(d.label, int)
            for d in train):
        raise SplitFileError(f"{path}: expected {{'train': [Datum, ...], 'val': [...]}} "
                             "with an impath and a label in each Datum, as CoOp writes it")
    return [(d.impath, d.label) for d in train]


def training_shots(root: Path, name: str, train: list[Item], shots: int, seed: int
                   ) -> tuple[list[Item], str | None]:
    """(the shots of all classes, the split file they came from or None when drawn).

    CoOp stores absolute paths of its author's machine: each is re-rooted at the last
    ``<dataset folder>/<image folder>`` in it, and must be one of the local training images
    with the same label."""
    path = split_fewshot_path(root, name, shots, seed)
    if not path.is_file():
        return few_shot(train, shots, seed), None
    spec = DATASETS[name]
    image_dir = root / spec.folder / spec.images
    anchor = [p for p in (spec.folder, *re.split(r"[\\/]+", spec.images)) if p]
    by_path = {i.path: i for i in train}
    items = []
    for impath, label in read_split_fewshot(path):
        parts = [p for p in re.split(r"[\\/]+", impath) if p]
        starts = [k for k in range(len(parts) - len(anchor))
                  if parts[k:k + len(anchor)] == anchor]
        local = str(image_dir.joinpath(*parts[starts[-1] + len(anchor):])) if starts else None
        item = by_path.get(local)
        if item is None or item.label != label:
            raise SplitFileError(f"{path}: shot {impath!r} (label {label}) is not one of "
                                 f"{name}'s training images under {image_dir}")
        items.append(item)
    return items, str(path.relative_to(root / spec.folder))


# --- one pass over the test images for every model --------------------------------------

class _TestBatches(torch.utils.data.Dataset):
    """Batch ``b`` of the test images, decoded and preprocessed in a loader worker."""

    def __init__(self, paths: list[str], preprocess, batch_size: int):
        self.paths, self.preprocess, self.batch_size = paths, preprocess, batch_size

    def __len__(self) -> int:
        return math.ceil(len(self.paths) / self.batch_size)

    def __getitem__(self, b: int) -> torch.Tensor:
        chunk = self.paths[b * self.batch_size:(b + 1) * self.batch_size]
        return self.preprocess([open_image(p) for p in chunk])


@torch.no_grad()
def predict(base, paths: list[str], models: dict[str, Delta | None],
            text: dict[str, torch.Tensor], half: int, *, workers: int = 0,
            batch_size: int = 128) -> dict[str, dict[str, torch.Tensor]]:
    """Each model's predicted labels for the test images: among all classes, among the base
    ones (text rows [:half]) and among the new ones. The images are decoded once, in
    ``workers`` processes, and each batch goes through every model (a delta is swapped in
    per batch: 46k numbers), so the cost is one decode and one forward per model."""
    # the workers get the preprocessing, not the weights
    preprocess = dataclasses.replace(base, model=None, tokenizer=None).preprocess
    loader = torch.utils.data.DataLoader(
        _TestBatches(paths, preprocess, batch_size), batch_size=None, num_workers=workers,
        pin_memory=base.device.type == "cuda")
    out = {key: {"all": [], "base": [], "new": []} for key in models}
    base.model.eval()
    for pixels in loader:
        pixels = pixels.to(base.device, non_blocking=True)
        for key, delta in models.items():
            with applied(base, delta):
                scores = image_features(base, pixels) @ text[key].T
            out[key]["all"].append(scores.argmax(-1).cpu())
            out[key]["base"].append(scores[:, :half].argmax(-1).cpu())
            if half < scores.shape[1]:  # a one-class dataset has no new half
                out[key]["new"].append(scores[:, half:].argmax(-1).cpu() + half)
    empty = torch.empty(0, dtype=torch.long)
    return {key: {g: torch.cat(v) if v else empty for g, v in groups.items()}
            for key, groups in out.items()}


def accuracies(preds: dict[str, torch.Tensor], labels: torch.Tensor, half: int) -> dict:
    """Base accuracy (base images, base classes), new (new images, new classes), all."""
    b, n = labels < half, labels >= half
    return {"base": accuracy(preds["base"][b], labels[b]),
            "new": accuracy(preds["new"][n], labels[n]),
            "all": accuracy(preds["all"], labels)}


# --- one dataset -----------------------------------------------------------------------------

def _trained(base, train: FewShotDataset, config: TrainConfig, *, protocol: str,
             shots_file: str | None, directory: Path | None, reuse: bool
             ) -> tuple[Delta, bool]:
    """(delta, whether it was reused): train and save the delta in ``directory``; with
    ``reuse``, a delta saved there with the same settings (an interrupted run's) is loaded
    instead."""
    settings = config.to_dict() | {"train_images": len(train), "protocol": protocol,
                                   "shots_file": shots_file}
    if reuse and directory is not None and directory.is_dir():
        try:
            saved = Delta.load(directory)
        except (DeltaError, OSError, SafetensorError):  # half-written when it stopped
            saved = None
        if saved is not None and saved.config.base_fingerprint == base.fingerprint and \
                saved.config.hyperparameters == settings:
            return saved, True
    delta = train_clipfit(base, train, config).delta
    delta.config.hyperparameters = settings
    if directory is not None:
        delta.save(directory)
    return delta, False


def run_dataset(base, root: Path, name: str, *, seeds, shots: int, epochs: int | None,
                protocols=("base2new",), lambda_kd: float = PAPER.values["lambda"],
                fewshot_lambda: float | None = None,
                batch_size: int = PAPER.values["batch_size"], workers: int = 0,
                eval_batch_size: int = 128, previous: dict | None = None,
                deltas_dir: Path | None = None, reuse_deltas: bool = False,
                progress=print) -> dict:
    """Train the (protocol, seed) runs not already in ``previous`` (this dataset's entry of an
    earlier results file), evaluate them and zero-shot in one pass over the test images, and
    return the dataset's entry: classes, zero-shot, every run, and the summaries.

    Deltas are saved under ``deltas_dir/<dataset>/<protocol>-seed<seed>``; with
    ``reuse_deltas``, one already there with the same settings is used instead of training."""
    spec = DATASETS[name]
    previous = previous or {}
    done = {(r["protocol"], r["seed"]) for r in previous.get("runs", [])}
    pending = [(p, s) for p in protocols for s in seeds if (p, s) not in done]
    if not pending and "zero-shot" in previous:
        return summarize(previous)
    splits = read_dataset(root, name)
    templates = resolve_templates(spec.template)
    labels = sorted({i.label for i in splits["train"]})
    index = {y: k for k, y in enumerate(labels)}
    names = {i.label: i.classname.replace("_", " ") for i in splits["train"] + splits["test"]}
    classnames, half = [names[y] for y in labels], math.ceil(len(labels) / 2)

    models: dict[str, Delta | None] = {} if "zero-shot" in previous else {"zero-shot": None}
    runs = {}
    for protocol, seed in pending:
        shot_items, shots_file = training_shots(root, name, splits["train"], shots, seed)
        fewshot = protocol == "fewshot"
        train = FewShotDataset(classnames if fewshot else classnames[:half], [
            Sample(i.path, index[i.label]) for i in shot_items
            if fewshot or index[i.label] < half])
        lam = lambda_kd if not fewshot else \
            spec.fewshot_lambda if fewshot_lambda is None else fewshot_lambda
        config = TrainConfig(epochs=epochs or spec.epochs, batch_size=batch_size, shots=shots,
                             lambda_kd=lam, templates=templates, seed=seed)
        start = time.perf_counter()
        directory = deltas_dir / name / f"{protocol}-seed{seed}" if deltas_dir else None
        models[f"{protocol}-{seed}"], reused = _trained(
            base, train, config, protocol=protocol, shots_file=shots_file,
            directory=directory, reuse=reuse_deltas)
        seconds = None if reused else round(time.perf_counter() - start, 1)
        runs[f"{protocol}-{seed}"] = {"protocol": protocol, "seed": seed,
                                      "shots_file": shots_file, "train_images": len(train),
                                      "train_seconds": seconds}
        progress(f"{name} {protocol} seed {seed}: " + (
            f"the delta saved in {directory} reused" if reused else
            f"trained on {len(train)} images ({shots_file or 'shots drawn with the seed'}) "
            f"in {seconds} s"))

    text = {}
    for key, delta in models.items():
        with applied(base, delta):
            text[key] = class_text_features(base, classnames, templates)
    test = [i for i in splits["test"] if i.label in index]
    preds = predict(base, [i.path for i in test], models, text, half, workers=workers,
                    batch_size=eval_batch_size)
    y = torch.tensor([index[i.label] for i in test], dtype=torch.long)
    entry = {"classes": {"base": half, "new": len(labels) - half, "all": len(labels)},
             "zero-shot": previous.get("zero-shot"), "runs": list(previous.get("runs", []))}
    for key, p in preds.items():
        acc = accuracies(p, y, half)
        if key == "zero-shot":
            entry["zero-shot"] = acc | {"hm": harmonic_mean(acc["base"], acc["new"])}
            continue
        run = runs[key]
        if run["protocol"] == "base2new":
            run |= {"base": acc["base"], "new": acc["new"],
                    "hm": harmonic_mean(acc["base"], acc["new"])}
            progress(f"{name} base2new seed {run['seed']}: base {acc['base']:.4f} "
                     f"new {acc['new']:.4f}")
        else:
            run["all"] = acc["all"]
            progress(f"{name} fewshot seed {run['seed']}: all {acc['all']:.4f}")
        entry["runs"].append(run)
    entry["runs"].sort(key=lambda r: (PROTOCOLS.index(r["protocol"]), r["seed"]))
    return summarize(entry)


# --- summaries -------------------------------------------------------------------------------

def _base2new_summary(per_seed: dict[int, tuple[float, float]]) -> dict:
    """Mean base and new over seeds, HM of those means (the paper's way), and the population
    standard deviation over seeds of base, new and per-seed HM (as CoOp's parse_test_res)."""
    b = [v[0] for v in per_seed.values()]
    n = [v[1] for v in per_seed.values()]
    hm = [harmonic_mean(x, z) for x, z in per_seed.values()]
    mb, mn = statistics.fmean(b), statistics.fmean(n)
    return {"base": mb, "new": mn, "hm": harmonic_mean(mb, mn),
            "std": {"base": statistics.pstdev(b), "new": statistics.pstdev(n),
                    "hm": statistics.pstdev(hm)}, "seeds": sorted(per_seed)}


def _fewshot_summary(per_seed: dict[int, float]) -> dict:
    values = list(per_seed.values())
    return {"all": statistics.fmean(values), "std": {"all": statistics.pstdev(values)},
            "seeds": sorted(per_seed)}


def summarize(entry: dict) -> dict:
    """A dataset's entry with "clipfit" (base2new) and "fewshot" summaries over its runs."""
    out = {k: entry[k] for k in ("classes", "zero-shot", "runs")}
    b2n = {r["seed"]: (r["base"], r["new"]) for r in out["runs"] if r["protocol"] == "base2new"}
    fs = {r["seed"]: r["all"] for r in out["runs"] if r["protocol"] == "fewshot"}
    if b2n:
        out["clipfit"] = _base2new_summary(b2n)
    if fs:
        out["fewshot"] = _fewshot_summary(fs)
    return out


def average(results: dict) -> dict:
    """Over datasets: zero-shot means; for each protocol, the mean over datasets per seed
    (seeds every dataset with that protocol has), then mean and std over those seeds."""
    out = {}
    if results:
        zs = [r["zero-shot"] for r in results.values()]
        out["zero-shot"] = {k: statistics.fmean(z[k] for z in zs) for k in ("base", "new", "all")}
        out["zero-shot"]["hm"] = harmonic_mean(out["zero-shot"]["base"], out["zero-shot"]["new"])
    for key, protocol in (("clipfit", "base2new"), ("fewshot", "fewshot")):
        entries = [r for r in results.values() if key in r]
        seeds = set.intersection(*(set(r[key]["seeds"]) for r in entries)) if entries else set()
        if not seeds:
            continue
        per_seed = {s: [x for r in entries for x in r["runs"]
                        if x["protocol"] == protocol and x["seed"] == s] for s in sorted(seeds)}
        if protocol == "base2new":
            out[key] = _base2new_summary({s: (statistics.fmean(x["base"] for x in xs),
                                              statistics.fmean(x["new"] for x in xs))
                                          for s, xs in per_seed.items()})
        else:
            out[key] = _fewshot_summary({s: statistics.fmean(x["all"] for x in xs)
                                         for s, xs in per_seed.items()})
        out[key]["datasets"] = len(entries)
    return out


def table(results: dict, avg: dict | None = None) -> str:
    """Markdown: base-to-new, then few-shot, in percent (mean ± std over seeds)."""
    rows = results | ({"average": avg} if avg else {})

    def pct(summary, key):
        return f"{100 * summary[key]:.2f} ± {100 * summary['std'][key]:.2f}"

    lines = []
    if any("clipfit" in r for r in rows.values()):
        header = "| dataset | ZS base | ZS new | ZS HM | ClipFit base | ClipFit new | ClipFit HM |"
        lines += [header, "|---|---|---|---|---|---|---|"]
        for name, r in rows.items():
            if "clipfit" in r:
                z, c = r["zero-shot"], r["clipfit"]
                lines.append(f"| {name} | " + " | ".join(
                    [f"{100 * z[k]:.2f}" for k in ("base", "new", "hm")] +
                    [pct(c, k) for k in ("base", "new", "hm")]) + " |")
        lines.append("")
    if any("fewshot" in r for r in rows.values()):
        lines += ["| dataset | ZS all classes | ClipFit few-shot |", "|---|---|---|"]
        for name, r in rows.items():
            if "fewshot" in r:
                lines.append(f"| {name} | {100 * r['zero-shot']['all']:.2f} | "
                             f"{pct(r['fewshot'], 'all')} |")
        lines.append("")
    return "\n".join(lines)


def write_atomic(path: Path, text: str) -> None:
    """Readers (and a crash) see the old file or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv=None) -> int:
    from clipfit_core.models import create_base_model
    from registry.settings import Settings

    parser = argparse.ArgumentParser(prog="python -m bench.base2new",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="CoOp data root (DATASETS.md layout)")
    parser.add_argument("--model", default="ViT-B-16:openai")
    parser.add_argument("--protocol", choices=(*PROTOCOLS, "both"), default="base2new")
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=None,
                        help="override the per-dataset epochs (10 large / 100 others)")
    parser.add_argument("--lambda", dest="lambda_kd", type=float,
                        default=PAPER.values["lambda"], help="base-to-new distillation weight")
    parser.add_argument("--fewshot-lambda", type=float, default=None,
                        help="few-shot distillation weight (default: 2, 8 on DTD and SUN397)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="processes decoding test images (0: in this process)")
    parser.add_argument("--eval-batch-size", type=int, default=128)
    parser.add_argument("--device", default=None)
    parser.add_argument("--cache-dir", default=None,
                        help="weights directory (default: Settings().weights_dir: "
                             "CLIPFIT_WEIGHTS_DIR or .env, else ~/.cache/clipfit/weights)")
    parser.add_argument("--out", default=None,
                        help="folder for base2new.json / .md (rewritten after each dataset) "
                             "and the deltas")
    parser.add_argument("--resume", action="store_true",
                        help="skip the runs already in OUT/base2new.json")
    args = parser.parse_args(argv)
    unknown = [n for n in args.datasets.split(",") if n not in DATASETS]
    if unknown:
        parser.error(f"unknown datasets {unknown}; known: {', '.join(DATASETS)}")
    if args.resume and not args.out:
        parser.error("--resume needs --out (the folder of the results to resume)")
    protocols = PROTOCOLS if args.protocol == "both" else (args.protocol,)
    out = Path(args.out) if args.out else None
    json_path = out / f"{REPORT_NAME}.json" if out else None

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cache_dir = args.cache_dir or Settings().weights_dir
    base = create_base_model(args.model, device=device, cache_dir=cache_dir)
    settings = {"model": args.model, "fingerprint": base.fingerprint, "shots": args.shots,
                "epochs": args.epochs, "lambda": args.lambda_kd,
                "fewshot_lambda": args.fewshot_lambda}
    results, seconds = {}, 0.0
    if args.resume and json_path.is_file():
        earlier = json.loads(json_path.read_text())
        differ = {k: (earlier.get(k), v) for k, v in settings.items() if earlier.get(k) != v}
        if differ:
            raise SystemExit(f"--resume: {json_path} holds runs with other settings "
                             f"(file, now): {differ}; use another --out, or drop --resume")
        results, seconds = earlier["results"], earlier.get("seconds", 0.0)
    if out:
        out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for name in args.datasets.split(","):
        results[name] = run_dataset(
            base, Path(args.root), name, seeds=[int(s) for s in args.seeds.split(",")],
            shots=args.shots, epochs=args.epochs, protocols=protocols,
            lambda_kd=args.lambda_kd, fewshot_lambda=args.fewshot_lambda,
            workers=args.workers, eval_batch_size=args.eval_batch_size,
            previous=results.get(name), deltas_dir=out / "deltas" if out else None,
            reuse_deltas=args.resume, progress=lambda m: print(m, file=sys.stderr))
        if out:
            avg = average(results)
            write_atomic(json_path, json.dumps(
                settings | {"results": results, "average": avg, "seconds": round(
                    seconds + time.perf_counter() - start, 1)}, indent=2) + "\n")
            write_atomic(out / f"{REPORT_NAME}.md", table(results, avg))
    print(table(results, average(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
