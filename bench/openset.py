"""The evaluation report and the "unknown" answer on the demo's data (clipfit-mini, blurred
Fashion-MNIST, 16 training images per class, the ``demo`` recipe): an adapter is trained on
some classes, then meets held-out images of those classes and of classes it never saw.

    python -m bench.openset [--novel 3] [--seeds 0 1 2] [--json OUT]

For each seed, the last ``--novel`` classes (of a seeded shuffle) are kept out of training.
Printed per seed and on average: the stored held-out report (accuracy zero-shot vs tuned,
calibration error before and after temperature scaling, the threshold), and on 50 test
images per class: accuracy on the known classes, the share answered "unknown" of the known
classes' images and of the novel classes' images, and the accuracy of what is kept.
Needs clipfit-mini (``bash scripts/ensure_mini.sh``); about a minute per seed on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from clipfit_core.classify import Classifier, predict
from clipfit_core.config import TrainConfig, prepare_training_set
from clipfit_core.data import FewShotDataset, Sample, load_dataset
from clipfit_core.models import create_base_model
from clipfit_core.train import train_clipfit
from registry.settings import Settings

from .domains import export


def run_seed(base, train_dir: Path, test_dir: Path, novel: int, seed: int,
             settings: dict | None = None) -> dict:
    """One seed's row; ``settings`` (TrainConfig field names) replace the demo recipe."""
    train_all, test_all = load_dataset(train_dir), load_dataset(test_dir)
    order = np.random.default_rng(seed).permutation(len(train_all.classnames))
    novel_ids = set(order[-novel:].tolist())
    known = [c for i, c in enumerate(train_all.classnames) if i not in novel_ids]
    subset = FewShotDataset(known, [
        Sample(s.source, known.index(train_all.classnames[s.label]), s.name)
        for s in train_all.samples if s.label not in novel_ids])
    config = TrainConfig.from_recipe("demo", seed=seed) if settings is None \
        else TrainConfig(seed=seed, **settings)
    train, val = prepare_training_set(subset, config)
    delta = train_clipfit(base, train, config, val_set=val).delta
    cal, report = delta.config.calibration, delta.config.evaluation

    known_test = [s for s in test_all.samples if s.label not in novel_ids]
    novel_test = [s for s in test_all.samples if s.label in novel_ids]
    classifier = Classifier(base)

    def top(samples) -> tuple[torch.Tensor, torch.Tensor]:
        """(predicted index, answered "unknown") per image, as classify answers them."""
        logits = classifier.logits([s.source for s in samples], known, delta.config.templates,
                                   delta)
        preds = predict(logits, known, temperature=cal["temperature"],
                        threshold=cal["threshold"], top_k=1)
        return (torch.tensor([known.index(p.labels[0]) for p in preds], dtype=torch.long),
                torch.tensor([p.unknown for p in preds], dtype=torch.bool))

    known_pred, known_unknown = top(known_test)
    _, novel_unknown = top(novel_test)
    truth = torch.tensor([known.index(test_all.classnames[s.label]) for s in known_test])
    kept = ~known_unknown
    right = known_pred == truth
    return {
        "seed": seed, "known": known,
        "novel": [c for i, c in enumerate(train_all.classnames) if i in novel_ids],
        "held_out_images": report["images"],
        "held_out_zero_shot": report["zero_shot"]["accuracy"],
        "held_out_tuned": report["tuned"]["accuracy"],
        "temperature": cal["temperature"], "ece_before": cal["ece_before"],
        "ece_after": cal["ece_after"], "threshold": cal["threshold"],
        "test_accuracy_known": right.float().mean().item(),
        "unknown_share_known": (~kept).float().mean().item(),
        "unknown_share_novel": novel_unknown.float().mean().item(),
        "accuracy_of_kept": right[kept].float().mean().item() if kept.any() else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--novel", type=int, default=3, help="classes kept out of training")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--cache-dir", help="weights directory (default: Settings().weights_dir:"
                        " CLIPFIT_WEIGHTS_DIR or .env, else ~/.cache/clipfit/weights)")
    args = parser.parse_args()
    base = create_base_model("clipfit-mini", cache_dir=args.cache_dir or Settings().weights_dir)
    with tempfile.TemporaryDirectory() as tmp:
        train_dir = export("blur", Path(tmp) / "train", split="train", per_class=16)
        test_dir = export("blur", Path(tmp) / "test", split="test", per_class=50)
        rows = [run_seed(base, train_dir, test_dir, args.novel, seed) for seed in args.seeds]
    keys = ["held_out_zero_shot", "held_out_tuned", "ece_before", "ece_after", "threshold",
            "test_accuracy_known", "unknown_share_known", "unknown_share_novel",
            "accuracy_of_kept"]
    print(f"{'seed':>4}  " + "  ".join(f"{k:>20}" for k in keys))
    for r in rows:
        print(f"{r['seed']:>4}  " + "  ".join(f"{r[k]:>20.3f}" for k in keys)
              + f"   novel: {', '.join(r['novel'])}")
    mean = {k: float(np.mean([r[k] for r in rows if r[k] is not None])) for k in keys}
    print(f"{'mean':>4}  " + "  ".join(f"{mean[k]:>20.3f}" for k in keys))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "mean": mean}, indent=2))


if __name__ == "__main__":
    main()
