"""Batch prediction speed against the limit, and the cost of a worker killed halfway.

    .venv/bin/python -m bench.batch_predict                       # ViT-B-32, 2,000 images, CPU
    .venv/bin/python -m bench.batch_predict --model ViT-B-16 --device cuda --batch 128

Random weights (the spec names only an architecture): speed does not depend on them. One run,
on the same machine, with the same synthetic images (64x64 PNG, all distinct), measures:

(a) the limit: raw ``model.encode_image`` at ``--batch`` images per pass, from preprocessed
    pixels (as bench/serve_speed.py's (a)); measured before and after (b), the faster of the
    two is the reference;
(b) a batch prediction of ``--images`` images through the real task (``clipfit.predict_job``,
    run in this process on a SQLite registry in a temporary folder: images read from the
    blob store, decoded, preprocessed, classified at ``--batch`` per pass, a chunk of
    ``--chunk`` recorded at a time, result files written), timed from the task's start to
    its end. Ratio b/a: the goal on a CPU is >= 0.9;
(c) a worker killed halfway: the task runs in a child process that is SIGKILLed once it
    has classified half the images (mid-chunk, as a crash lands), then runs again (a
    redelivery) and finishes. Reported: images
    the killed worker had classified (counted by the child, per pass) but not recorded, so
    classified twice (at most one chunk), and the seconds lost.

With ``--rounds R`` (a) and (b) alternate R times and the median round is reported.
Results: ``OUT/batch_predict.json`` (default: results/batch_predict).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.serve_speed import CLASSES, TEMPLATE, make_pngs, raw_limit
from clipfit_core.models import create_base_model, resolve_device
from registry.db import get_engine, session_scope
from registry.migrate import upgrade
from registry.models import Job, Prediction
from registry.predictions import create_prediction
from registry.settings import Settings
from service.queue import PREDICT_TASK

TENANT = "default"


def settings_for(data_dir: Path, args) -> Settings:
    return Settings(data_dir=data_dir, base_models=args.model, device=args.device,
                    predict_batch_size=args.batch, predict_chunk_size=args.chunk,
                    batch_max_size=min(args.batch, 4096), stale_after_seconds=1.0,
                    heartbeat_seconds=0.5)


def submit(settings: Settings, spec: str, pngs: list[bytes]) -> str:
    """A queued zero-shot prediction of ``pngs`` (as the API stores one from a zip)."""
    with session_scope(get_engine(settings.sqlalchemy_url)) as s:
        job = create_prediction(
            s, tenant_id=TENANT, base_model=spec, templates=[TEMPLATE], classnames=CLASSES,
            top_k=5, temperature=1.0, threshold=None, adapter_id=None, adapter_ref=None,
            source="zip", chunk_size=settings.predict_chunk_size,
            uploads=[(f"img/{i:05d}.png", data) for i, data in enumerate(pngs)])
        return job.id


def task(settings: Settings):
    from worker.celery_app import create_worker_app

    return create_worker_app(settings).tasks[PREDICT_TASK]


def state(settings: Settings, job_id: str) -> tuple[str, dict, int]:
    with session_scope(get_engine(settings.sqlalchemy_url)) as s:
        job = s.get(Job, job_id)
        return job.status, dict(job.progress or {}), s.get(Prediction, job_id).classified


def run_job(settings: Settings, run, pngs: list[bytes], spec: str) -> dict:
    job_id = submit(settings, spec, pngs)
    start = time.perf_counter()
    outcome = run(job_id)
    elapsed = time.perf_counter() - start
    status, _, classified = state(settings, job_id)
    if status != "succeeded" or classified != len(pngs):
        raise RuntimeError(f"the prediction ended {status} ({outcome}) with {classified} of "
                           f"{len(pngs)} images classified")
    return {"images": len(pngs), "seconds": round(elapsed, 2),
            "images_per_s": round(len(pngs) / elapsed, 2)}


def child(data_dir: str, args, job_id: str, counter: str) -> int:
    """The worker that is killed: the task, counting every image it classifies."""
    from clipfit_core.serving import MixedAdapterModel

    encode = MixedAdapterModel.encode_images
    seen = {"n": 0}

    def counting(self, pixels, slots):
        out = encode(self, pixels, slots)
        seen["n"] += pixels.shape[0]
        Path(counter).write_text(str(seen["n"]))
        return out

    MixedAdapterModel.encode_images = counting
    task(settings_for(Path(data_dir), args))(job_id)
    return 0


def killed_halfway(settings: Settings, args, run, pngs: list[bytes], data_dir: Path) -> dict:
    job_id = submit(settings, args.model, pngs)
    counter = data_dir / "classified-by-the-killed-worker"
    argv = [sys.executable, "-m", "bench.batch_predict", "--child", job_id, str(counter),
            "--data-dir", str(data_dir), "--model", args.model, "--device", args.device,
            "--batch", str(args.batch), "--chunk", str(args.chunk)]
    start = time.perf_counter()
    proc = subprocess.Popen(argv, start_new_session=True)
    half = len(pngs) // 2

    def images_classified() -> int:
        try:
            return int(counter.read_text() or 0)
        except (OSError, ValueError):
            return 0

    while images_classified() < half:  # halfway through the images: mid-chunk, as a crash lands
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited ({proc.returncode}) before halfway")
        time.sleep(0.02)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError as e:
        raise RuntimeError("the worker finished before it could be killed: give more "
                           "--images") from e
    proc.wait()
    killed_after = time.perf_counter() - start
    recorded = state(settings, job_id)[1].get("images_done", 0)
    classified = images_classified()
    time.sleep(settings.stale_after_seconds + 0.2)  # its heartbeat goes stale
    again = time.perf_counter()
    run(job_id)
    resumed = time.perf_counter() - again
    status, progress, done = state(settings, job_id)
    if status != "succeeded" or done != len(pngs):
        raise RuntimeError(f"the resumed prediction ended {status} with {done} images")
    return {"killed_after_s": round(killed_after, 2), "recorded_when_killed": recorded,
            "classified_when_killed": classified,
            "classified_twice": max(0, classified - recorded),
            "resumed_seconds": round(resumed, 2),
            "images_in_second_attempt": len(pngs) - recorded,
            "attempt": progress.get("attempt")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.batch_predict")
    p.add_argument("--model", default="ViT-B-32", help="an open_clip architecture (random "
                   "weights) or clipfit-tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--batch", type=int, default=32, help="images per forward pass")
    p.add_argument("--chunk", type=int, default=256, help="images per recorded chunk")
    p.add_argument("--rounds", type=int, default=1, help="0: only (c)")
    p.add_argument("--raw-seconds", type=float, default=10.0)
    p.add_argument("--skip-kill", action="store_true")
    p.add_argument("--out", type=Path, default=Path("results/batch_predict"))
    p.add_argument("--data-dir", help=argparse.SUPPRESS)
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args.data_dir, args, *args.child)

    with tempfile.TemporaryDirectory(prefix="clipfit-batch-") as tmp:
        data_dir = Path(tmp)
        settings = settings_for(data_dir, args)
        upgrade(settings.sqlalchemy_url)
        pngs = make_pngs(args.images)
        base = create_base_model(args.model, device=resolve_device(args.device))
        run = task(settings)
        print(f"{args.model} on {args.device} ({torch.get_num_threads()} threads), "
              f"{args.images} images, batch {args.batch}, chunk {args.chunk}", flush=True)
        run_job(settings, run, pngs[:max(args.batch, 8)], args.model)  # loads the model
        rounds = []
        for r in range(args.rounds):
            print(f"round {r + 1}: (a) raw encode_image ...", flush=True)
            before = raw_limit(base, pngs, args.batch, args.raw_seconds)
            print(f"round {r + 1}: (b) batch prediction of {args.images} images ...",
                  flush=True)
            job = run_job(settings, run, pngs, args.model)
            after = raw_limit(base, pngs, args.batch, args.raw_seconds)
            limit = max(before, after, key=lambda x: x["images_per_s"])
            rounds.append({"a": limit, "a_before": before, "a_after": after, "b": job,
                           "ratio": round(job["images_per_s"] / limit["images_per_s"], 3)})
            print(f"  a {limit['images_per_s']} img/s, b {job['images_per_s']} img/s, "
                  f"b/a {rounds[-1]['ratio']}", flush=True)
        median = sorted(rounds, key=lambda x: x["ratio"])[len(rounds) // 2] if rounds \
            else {"a": None, "b": None, "ratio": None}
        result = {"model": args.model, "device": args.device, "images": args.images,
                  "batch": args.batch, "chunk": args.chunk, "threads": torch.get_num_threads(),
                  "machine": platform.processor() or platform.machine(),
                  "rounds": rounds, **{k: median[k] for k in ("a", "b", "ratio")},
                  "ratio_spread": [min(r["ratio"] for r in rounds),
                                   max(r["ratio"] for r in rounds)]
                  if rounds else None, "median_of": len(rounds)}
        if not args.skip_kill:
            print("(c) a worker killed halfway ...", flush=True)
            result["c"] = killed_halfway(settings, args, run, pngs, data_dir)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "batch_predict.json").write_text(json.dumps(result, indent=2))
    print_table(result)
    return 0


def print_table(r: dict) -> None:
    if r["a"] is not None:
        print(f"(a) limit: raw encode_image at batch {r['batch']}: {r['a']['images_per_s']} "
              "img/s")
        print(f"(b) batch prediction, {r['images']} images (chunk {r['chunk']}): "
              f"{r['b']['images_per_s']} img/s in {r['b']['seconds']} s")
        print(f"    b/a = {r['ratio']} (goal >= 0.9; median of {r['median_of']} rounds, "
              f"spread {r['ratio_spread']})")
    if "c" in r:
        c = r["c"]
        print(f"(c) killed after {c['killed_after_s']} s with {c['recorded_when_killed']} "
              f"images recorded and {c['classified_when_killed']} classified: "
              f"{c['classified_twice']} images classified twice; the redelivery classified "
              f"the other {c['images_in_second_attempt']} in {c['resumed_seconds']} s")


if __name__ == "__main__":
    raise SystemExit(main())
