"""Training throughput of ClipFit (images/s), and the text-encoder truncation speed-up.

    python -m bench.train_throughput --model clipfit-tiny --steps 30
    python -m bench.train_throughput --model ViT-B-16 --steps 4

Random weights (no download). Throughput is steady-state: the first step (allocation,
warm-up) is excluded. Images are synthetic, decoded once, augmented every step as in training.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from clipfit_core.classify import encode_text, tokenize_prompts
from clipfit_core.data import FewShotDataset, Sample
from clipfit_core.models import create_base_model
from clipfit_core.synthetic import COLOURS, render
from clipfit_core.train import TrainConfig, train_clipfit


def synthetic_set(n_classes: int, per_class: int, size: int) -> FewShotDataset:
    import io

    import numpy as np

    rng = np.random.default_rng(0)
    colours = list(COLOURS.values())
    samples = []
    for label in range(n_classes):
        for _ in range(per_class):
            buf = io.BytesIO()
            render(colours[label % len(colours)], size, rng).save(buf, format="PNG")
            samples.append(Sample(buf.getvalue(), label))
    return FewShotDataset([f"class {i}" for i in range(n_classes)], samples)


def train_throughput(base, classes: int, batch: int, steps: int, device: str) -> dict:
    per_class = -(-batch * 2 // classes)  # two full batches per epoch
    data = synthetic_set(classes, per_class, base.image_size)
    epochs = -(-(steps + 1) // 2)
    stamps = []
    train_clipfit(base, data, TrainConfig(epochs=epochs, batch_size=batch),
                  on_progress=lambda p: stamps.append(time.perf_counter()))
    timed = len(stamps) - 1
    seconds = stamps[-1] - stamps[0]
    return {"steps_timed": timed, "batch_size": batch, "classes": classes,
            "images_per_sec": round(timed * batch / seconds, 2),
            "seconds_per_step": round(seconds / timed, 3)}


@torch.no_grad()
def text_speedup(base, classes: int, repeats: int) -> dict:
    tokens = tokenize_prompts(base, [f"class number {i}" for i in range(classes)],
                              ["a photo of a {}."])
    def timeit(fn):
        fn()
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        return (time.perf_counter() - start) / repeats
    full = timeit(lambda: base.model.encode_text(tokens))
    cut = timeit(lambda: encode_text(base.model, tokens))
    return {"classes": classes, "open_clip_encode_text_ms": round(full * 1e3, 2),
            "truncated_encode_text_ms": round(cut * 1e3, 2), "speedup": round(full / cut, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.train_throughput",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="clipfit-tiny")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--text-repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, help="folder for train_throughput.json")
    args = parser.parse_args()
    base = create_base_model(args.model, device=args.device)
    report = {"model": args.model, "device": args.device, "threads": torch.get_num_threads(),
              "train": train_throughput(base, args.classes, args.batch_size, args.steps,
                                        args.device),
              "text": text_speedup(base, args.classes, args.text_repeats)}
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "train_throughput.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
