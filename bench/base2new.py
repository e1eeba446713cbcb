"""The paper's own protocol: base-to-new on the 11 CoOp datasets, for users with the data,
ViT-B-16 weights and a GPU (it cannot run on this project's offline CPU machines).

Reads the CoOp / Dassl layout (the image folders plus CoOp's ``split_zhou_*.json`` split
files; FGVCAircraft's ``images_variant_*.txt``; ImageNet's ``classnames.txt`` + class
folders), splits each dataset's classes in halves (base: the first ceil(n/2) labels, as
CoCoOp's ``subsample_classes``), trains ClipFit on 16 shots per base class for each seed,
and reports base accuracy, new-class accuracy (zero-shot prompts through the tuned model)
and their harmonic mean per dataset and on average, beside zero-shot.

    python -m bench.base2new --root DATA --model ViT-B-16:openai --out results/b2n
        [--datasets oxford_pets,dtd] [--seeds 1,2,3] [--shots 16] [--epochs N]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from clipfit_core.classify import Classifier, resolve_templates
from clipfit_core.data import FewShotDataset, Sample
from clipfit_core.evaluate import accuracy, harmonic_mean
from clipfit_core.train import TrainConfig, train_clipfit


@dataclass(frozen=True)
class DatasetSpec:
    folder: str  # under the data root, as in CoOp's DATASETS.md
    images: str  # image folder inside it
    kind: str  # "zhou" (split_zhou_*.json), "fgvc" (variant txt files), "imagenet"
    split_file: str = ""
    template: str = "default"  # a clipfit_core.classify template name
    epochs: int = 100  # the reference's base-to-new epochs: 10 for the large sets


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
    "sun397": DatasetSpec("sun397", "SUN397", "zhou", "split_zhou_SUN397.json", "sun397"),
    "dtd": DatasetSpec("dtd", "images", "zhou", "split_zhou_DescribableTextures.json", "dtd"),
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
    """``shots`` items per label drawn with ``seed`` (all of a smaller class)."""
    rng = random.Random(seed)
    by_label = defaultdict(list)
    for i in items:
        by_label[i.label].append(i)
    return [x for y in sorted(by_label) for x in
            rng.sample(by_label[y], min(shots, len(by_label[y])))]


def to_dataset(classnames: list[str], items: list[Item]) -> FewShotDataset:
    return FewShotDataset(classnames, [Sample(i.path, i.label) for i in items])


def evaluate(classifier: Classifier, data: FewShotDataset, templates, delta=None) -> float:
    logits = classifier.logits([s.source for s in data.samples], data.classnames, templates,
                               delta)
    return accuracy(logits.argmax(-1), [s.label for s in data.samples])


def run_dataset(base, root: Path, name: str, *, seeds, shots: int, epochs: int | None,
                lambda_kd: float = 8.0, batch_size: int = 32, progress=print) -> dict:
    spec = DATASETS[name]
    splits = read_dataset(root, name)
    templates = resolve_templates(spec.template)
    base_names, train_base = subsample_classes(splits["train"], "base")
    _, test_base = subsample_classes(splits["test"], "base")
    new_names, test_new = subsample_classes(splits["test"], "new")
    test_base, test_new = to_dataset(base_names, test_base), to_dataset(new_names, test_new)
    classifier = Classifier(base)
    zs = {"base": evaluate(classifier, test_base, templates),
          "new": evaluate(classifier, test_new, templates)}
    runs = []
    for seed in seeds:
        train = to_dataset(base_names, few_shot(train_base, shots, seed))
        config = TrainConfig(epochs=epochs or spec.epochs, batch_size=batch_size,
                             lambda_kd=lambda_kd, templates=templates, seed=seed)
        delta = train_clipfit(base, train, config).delta
        runs.append({"seed": seed, "base": evaluate(classifier, test_base, templates, delta),
                     "new": evaluate(classifier, test_new, templates, delta)})
        progress(f"{name} seed {seed}: base {runs[-1]['base']:.4f} new {runs[-1]['new']:.4f}")
    b = sum(r["base"] for r in runs) / len(runs)
    n = sum(r["new"] for r in runs) / len(runs)
    return {"zero-shot": zs | {"hm": harmonic_mean(zs["base"], zs["new"])},
            "clipfit": {"base": b, "new": n, "hm": harmonic_mean(b, n)}, "runs": runs,
            "classes": {"base": len(base_names), "new": len(new_names)}}


def table(results: dict) -> str:
    lines = ["| dataset | ZS base | ZS new | ZS HM | ClipFit base | ClipFit new | ClipFit HM |",
             "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        z, c = r["zero-shot"], r["clipfit"]
        lines.append(f"| {name} | " + " | ".join(f"{100 * v:.2f}" for v in (
            z["base"], z["new"], z["hm"], c["base"], c["new"], c["hm"])) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from clipfit_core.models import create_base_model
    from registry.settings import Settings

    parser = argparse.ArgumentParser(prog="python -m bench.base2new",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="CoOp data root (DATASETS.md layout)")
    parser.add_argument("--model", default="ViT-B-16:openai")
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=None,
                        help="override the per-dataset epochs (10 large / 100 others)")
    parser.add_argument("--lambda", dest="lambda_kd", type=float, default=8.0)
    parser.add_argument("--device", default=None)
    parser.add_argument("--cache-dir", default=None,
                        help="weights directory (default: Settings().weights_dir: "
                             "CLIPFIT_WEIGHTS_DIR or .env, else ~/.cache/clipfit/weights)")
    parser.add_argument("--out", default=None, help="folder for base2new.json / .md")
    args = parser.parse_args(argv)
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cache_dir = args.cache_dir or Settings().weights_dir
    base = create_base_model(args.model, device=device, cache_dir=cache_dir)
    start, results = time.perf_counter(), {}
    for name in args.datasets.split(","):
        results[name] = run_dataset(base, Path(args.root), name,
                                    seeds=[int(s) for s in args.seeds.split(",")],
                                    shots=args.shots, epochs=args.epochs,
                                    lambda_kd=args.lambda_kd,
                                    progress=lambda m: print(m, file=sys.stderr))
    avg = {m: {k: sum(r[m][k] for r in results.values()) / len(results) for k in ("base", "new")}
           for m in ("zero-shot", "clipfit")}
    for v in avg.values():
        v["hm"] = harmonic_mean(v["base"], v["new"])
    results_with_avg = results | {"average": {"zero-shot": avg["zero-shot"],
                                              "clipfit": avg["clipfit"]}}
    text = table(results_with_avg)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "base2new.json").write_text(json.dumps(
            {"model": args.model, "results": results, "average": avg,
             "seconds": round(time.perf_counter() - start, 1)}, indent=2) + "\n")
        (out / "base2new.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
