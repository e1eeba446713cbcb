"""A client session against a running clipfit service, through the Python client
(``clipfit.client``): HTTP only.

Submits a training job from a folder-per-class image set, with a named recipe's
hyperparameters (``clipfit_core.recipes``; ``demo`` unless told) under any given explicitly,
follows its progress as Server-Sent Events, then classifies held-out images with the new
adapter and zero-shot with the same base model and classes, and prints both accuracies.

    python scripts/demo_client.py --url http://127.0.0.1:8000 --train DIR --test DIR
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from clipfit.client import IMAGE_SUFFIXES, ApiError, Client, folder_summary
from clipfit.remote import print_evaluation
from clipfit_core.recipes import RECIPES


def labelled_images(root: Path) -> list[tuple[Path, str]]:
    return [(path, folder.name.replace("_", " "))
            for folder in sorted(p for p in root.iterdir() if p.is_dir())
            for path in sorted(folder.iterdir()) if path.suffix.lower() in IMAGE_SUFFIXES]


def follow(cf: Client, job_id: str):
    """Print the job's events as they arrive (SSE) until it finishes; return the job."""
    for event in cf.jobs.watch(job_id):
        p = event.payload
        if event.kind == "progress":
            print(f"  epoch {p['epoch']:>3}/{p['epochs']}  step {p['step']:>4}/"
                  f"{p['total_steps']}  loss {p['loss']:.4f}  {p['images_per_sec']:.0f} img/s"
                  f"  eta {p['eta_seconds']:.0f} s", flush=True)
        else:
            print(f"  {event.kind} {json.dumps(p) if p else ''}", flush=True)
    return cf.jobs.get(job_id)


def accuracy(cf: Client, images: list[tuple[Path, str]], batch: int, **options) -> float:
    correct = 0
    for i in range(0, len(images), batch):
        chunk = images[i:i + batch]
        predictions = cf.classify([path for path, _ in chunk], top_k=1, **options)
        correct += sum(p.label == label for p, (_, label) in zip(predictions, chunk))
    return correct / len(images)


def with_unknown(cf: Client, images: list[tuple[Path, str]], batch: int,
                 adapter: str) -> tuple[float, float]:
    """(share answered "unknown", accuracy of the rest) with the adapter's threshold."""
    unknown, kept_right = 0, 0
    for i in range(0, len(images), batch):
        chunk = images[i:i + batch]
        predictions = cf.classify([path for path, _ in chunk], top_k=1, adapter=adapter,
                                  reject_unknown=True)
        unknown += sum(p.unknown for p in predictions)
        kept_right += sum(not p.unknown and p.label == label
                          for p, (_, label) in zip(predictions, chunk))
    kept = len(images) - unknown
    return unknown / len(images), kept_right / kept if kept else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--train", type=Path, required=True, help="folder per class")
    parser.add_argument("--test", type=Path, required=True, help="held-out, folder per class")
    parser.add_argument("--model", default="clipfit-mini")
    parser.add_argument("--recipe", choices=list(RECIPES), default="demo",
                        help="the job's hyperparameters (default: demo)")
    parser.add_argument("--epochs", help="instead of the recipe's")
    parser.add_argument("--lr", help="instead of the recipe's")
    parser.add_argument("--crop-min", help="instead of the recipe's")
    parser.add_argument("--batch-size", help="instead of the recipe's")
    parser.add_argument("--batch", type=int, default=100, help="images per classify request")
    parser.add_argument("--wait", type=float, default=120, help="seconds to wait for /readyz")
    parser.add_argument("--api-key", default=os.environ.get("CLIPFIT_API_KEY"),
                        help="a key with the train, classify and read scopes "
                             "(default: $CLIPFIT_API_KEY)")
    args = parser.parse_args()
    given = {"epochs": args.epochs, "lr": args.lr, "crop_min": args.crop_min,
             "batch_size": args.batch_size}
    hyperparameters = dict(RECIPES[args.recipe].values) | {
        k: v for k, v in given.items() if v is not None}

    with Client(args.url, args.api_key or "") as cf:
        try:
            cf.ready(args.wait)
            counts = folder_summary(args.train)
            print(f"== POST /v1/jobs: {args.train} ({sum(counts.values())} images, "
                  f"{len(counts)} classes), base model {args.model}, recipe {args.recipe}")
            job = cf.jobs.create(args.train, base_model=args.model,
                                 name=f"demo {args.train.name}", **hyperparameters)
            print(f"   job {job.id} {job.status}; following GET /v1/jobs/{job.id}/events")
            job = follow(cf, job.id)
            if job.status != "succeeded":
                sys.exit(f"job {job.status}: {job.error}")
            adapter = cf.adapters.get(job.adapter_id)
            m = adapter.metrics
            print(f"== adapter {adapter.id}: {adapter.trainable_count} trained numbers, "
                  f"{adapter.size_bytes} bytes; on its {m.get('val_images', 0)} held-out "
                  f"uploaded images: zero-shot "
                  f"{m.get('zero_shot_val_accuracy', float('nan')):.1%}, "
                  f"ClipFit {m.get('val_accuracy', float('nan')):.1%}")

            test = labelled_images(args.test)
            print(f"== POST /v1/classify: {len(test)} held-out images of {args.test}")
            t0 = time.perf_counter()
            tuned = accuracy(cf, test, args.batch, adapter=adapter.id)
            seconds = time.perf_counter() - t0
            zero = accuracy(cf, test, args.batch, base_model=adapter.base_model,
                            classes=adapter.classnames)
            report = cf.adapters.evaluation(adapter.id)
            unknown, kept = with_unknown(cf, test, args.batch, adapter.id)
        except (ApiError, TimeoutError) as e:
            sys.exit(f"the service refused or did not answer: {e}")
    print(f"== GET /v1/adapters/{adapter.id}/evaluation (the held-out uploaded images)")
    print_evaluation(report)
    print(f"zero-shot accuracy ({adapter.base_model}): {zero:.1%}")
    print(f"ClipFit adapter accuracy:            {tuned:.1%}  "
          f"({len(test) / seconds:.0f} images/s over HTTP)")
    print(f"with reject_unknown=true:            {unknown:.1%} answered \"unknown\", "
          f"{kept:.1%} right of the rest")
    return 0


if __name__ == "__main__":
    sys.exit(main())
