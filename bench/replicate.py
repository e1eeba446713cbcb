"""The replication study: does ClipFit do here what the paper claims?

Base-to-new on Fashion-MNIST domains unseen in clipfit-mini's pretraining: 5 base / 5 new
classes (two splits: one and its swap), 16 shots per base class, 3 seeds, 200 test images per
class. Methods on identical data and seeds: zero-shot, ClipFit, ClipFit text-only and
image-only, CoOp, full fine-tuning (validation-chosen lr, and 10x), a linear probe (base only),
and a learning-rate sweep for ClipFit and full fine-tuning (on the first seed's cells). Each
method's learning rate is the one of its grid with the best mean accuracy on held-out
*training* images of the base classes (first seed), never chosen on test images.

    python -m bench.replicate --out results/     # writes replication.md and replication.json

Needs the clipfit-mini checkpoint (`clipfit pretrain-mini`) and Fashion-MNIST.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from bench.methods import CROP_SCALE
from bench.protocol import Cell, make_cell_data
from clipfit_core.evaluate import harmonic_mean

CLIPFIT_LRS = [1e-3, 3e-3, 1e-2, 3e-2, 1e-1]
FULL_FT_LRS = [1e-5, 3e-5, 1e-4, 3e-4, 1e-3]
COOP_LRS = [2e-3, 2e-2]

_STATE: dict = {}  # per worker process: the base model, Fashion-MNIST, built cells


def _init_worker(weights_dir: str, threads: int, settings: dict) -> None:
    import torch

    from clipfit_core.models import create_base_model
    from clipfit_core.pretrain import load_fashion_mnist

    torch.set_num_threads(threads)
    _STATE["base"] = create_base_model("clipfit-mini", cache_dir=weights_dir)
    _STATE["train"] = load_fashion_mnist("train")
    _STATE["test"] = load_fashion_mnist("test")
    _STATE["settings"] = settings
    _STATE["splits"] = {}


def _split(cell: Cell):
    from bench.domains import DOMAINS, to_model_input
    from bench.methods import Split

    if cell not in _STATE["splits"]:
        s, base = _STATE["settings"], _STATE["base"]
        (tr_x, tr_y), (te_x, te_y) = _STATE["train"], _STATE["test"]
        idx = make_cell_data(cell, tr_y, te_y, shots=s["shots"],
                             val_per_class=s["val_per_class"],
                             test_per_class=s["test_per_class"])
        domain = DOMAINS[cell.domain]

        def pixels(images, labels, i):
            return to_model_input(base, domain(images[i])), labels[i]

        _STATE["splits"][cell] = Split(
            train_rgb=domain(tr_x[idx.train]), train_labels=tr_y[idx.train],
            val=pixels(tr_x, tr_y, idx.val), test_base=pixels(te_x, te_y, idx.test_base),
            test_new=pixels(te_x, te_y, idx.test_new),
            base_classes=cell.base_classes, new_classes=cell.new_classes)
    return _STATE["splits"][cell]


def _run(task: tuple) -> tuple:
    """One method on one cell: (task, result dict)."""
    from bench import methods

    cell, method, lr = task
    base, split, epochs = _STATE["base"], _split(cell), _STATE["settings"]["epochs"]
    kw = {"epochs": epochs, "seed": cell.seed}
    if method == "zero-shot":
        result = methods.zero_shot(base, split)
    elif method == "linear-probe":
        result = methods.linear_probe(base, split)
    elif method.startswith("clipfit"):
        result = methods.clipfit(base, split, lr=lr, text=method != "clipfit-image",
                                 image=method != "clipfit-text", **kw)
    elif method == "coop":
        result = methods.coop(base, split, lr=lr, **kw)
    elif method == "full-ft":
        result = methods.full_finetune(base, split, lr=lr, **kw)
    else:
        raise ValueError(method)
    return task, result


def _mean(values):
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def summarize(runs: dict, cells: list[Cell]) -> dict:
    """runs[(method, lr)][cell] -> per-domain and average base / new / hm."""
    domains = sorted({c.domain for c in cells})
    out = {}
    for key, by_cell in runs.items():
        per_domain = {}
        for d in domains:
            rows = [by_cell[c] for c in cells if c.domain == d and c in by_cell]
            base, new = _mean(r["base"] for r in rows), _mean(r["new"] for r in rows)
            per_domain[d] = {"base": base, "new": new, "val": _mean(r["val"] for r in rows),
                             "hm": harmonic_mean(base, new) if new is not None else None}
        base = _mean(v["base"] for v in per_domain.values())
        new = _mean(v["new"] for v in per_domain.values())
        out[key] = {"domains": per_domain, "average": {
            "base": base, "new": new, "val": _mean(v["val"] for v in per_domain.values()),
            "hm": harmonic_mean(base, new) if new is not None else None}}
    return out


def run_study(out_dir: Path, *, domains: list[str], seeds: list[int], epochs: int, jobs: int,
              weights_dir: str, shots: int = 16, val_per_class: int = 50,
              test_per_class: int = 200, progress=print) -> dict:
    start = time.perf_counter()
    cells = [Cell(d, s, seed) for d in domains for s in ("a", "b") for seed in seeds]
    settings = {"epochs": epochs, "shots": shots, "val_per_class": val_per_class,
                "test_per_class": test_per_class}
    runs: dict = defaultdict(dict)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    sweep_cells = [c for c in cells if c.seed == seeds[0]]
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_init_worker,
                             initargs=(weights_dir, threads, settings)) as pool:
        def execute(tasks, label):
            tasks = [t for t in tasks if t[0] not in runs.get((t[1], t[2]), {})]
            t0 = time.perf_counter()
            for i, ((cell, method, lr), result) in enumerate(pool.map(_run, tasks), 1):
                runs[(method, lr)][cell] = result
                if i % max(1, len(tasks) // 10) == 0 or i == len(tasks):
                    progress(f"{label}: {i}/{len(tasks)} runs, {time.perf_counter() - t0:.0f}s")

        # Phase 1, on the first seed's cells: every learning rate of each grid. Validation
        # accuracy (base classes, held-out training images) picks each method's rate.
        tasks = [(c, "clipfit", lr) for lr in CLIPFIT_LRS for c in sweep_cells]
        tasks += [(c, "full-ft", lr) for lr in FULL_FT_LRS for c in sweep_cells]
        tasks += [(c, "coop", lr) for lr in COOP_LRS for c in sweep_cells]
        execute(tasks, "phase 1 (learning-rate grids, first seed)")
        sweep = summarize(runs, sweep_cells)

        def chosen(method, grid):
            return max(grid, key=lambda lr: sweep[(method, lr)]["average"]["val"])

        lr_clipfit, lr_full, lr_coop = (chosen("clipfit", CLIPFIT_LRS),
                                        chosen("full-ft", FULL_FT_LRS), chosen("coop", COOP_LRS))
        lr_full_10x = round(lr_full * 10, 10)
        # Phase 2, on every cell: each method at its chosen rate (runs already made are kept).
        tasks = [(c, "zero-shot", None) for c in cells] + [(c, "linear-probe", None)
                                                         for c in cells]
        for method, lr in (("clipfit", lr_clipfit), ("clipfit-text", lr_clipfit),
                           ("clipfit-image", lr_clipfit), ("coop", lr_coop),
                           ("full-ft", lr_full), ("full-ft", lr_full_10x)):
            tasks += [(c, method, lr) for c in cells]
        execute(tasks, "phase 2 (all methods, all seeds)")
    summary = summarize(runs, cells)
    sweep = summarize(runs, sweep_cells)

    picked = {"zero-shot": ("zero-shot", None), "clipfit": ("clipfit", lr_clipfit),
              "clipfit-text": ("clipfit-text", lr_clipfit),
              "clipfit-image": ("clipfit-image", lr_clipfit), "coop": ("coop", lr_coop),
              "full-ft": ("full-ft", lr_full), "full-ft-10x": ("full-ft", lr_full_10x),
              "linear-probe": ("linear-probe", None)}
    strip = lambda d: {k: d[k] for k in ("base", "new", "hm")}
    report = {
        "average": {m: strip(summary[k]["average"]) for m, k in picked.items()},
        "domains": {d: {m: strip(summary[k]["domains"][d]) for m, k in picked.items()}
                    for d in domains},
        "lr_sweep": {"seeds": [seeds[0]], "zero-shot": strip(sweep[("zero-shot", None)]
                                                             ["average"])},
        "selected_lr": {"clipfit": lr_clipfit, "full-ft": lr_full, "coop": lr_coop},
        "seeds": seeds, "splits": ["a", "b"], "epochs": epochs, "shots": shots,
        "test_images_per_class": test_per_class, "val_images_per_class": val_per_class,
        "crop_scale": list(CROP_SCALE),
    }
    for method, grid in (("clipfit", CLIPFIT_LRS), ("full-ft", FULL_FT_LRS + [lr_full_10x])):
        grid = sorted(set(grid))
        rows = {str(lr): sweep[(method, lr)]["average"] for lr in grid}
        hms = [r["hm"] for r in rows.values()]
        report["lr_sweep"][method] = {"lrs": grid, "results": rows,
                                      "hm_spread": max(hms) - min(hms)}
    report["seconds"] = round(time.perf_counter() - start, 1)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "replication.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "replication.md").write_text(to_markdown(report))
    return report


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def to_markdown(report: dict) -> str:
    lines = ["# ClipFit replication on clipfit-mini (Fashion-MNIST domains)", "",
             f"Base-to-new, {report['shots']} shots per base class, splits "
             f"{'/'.join(report['splits'])}, seeds {report['seeds']}, {report['epochs']} epochs, "
             f"random resized crop scale {tuple(report['crop_scale'])}, "
             f"{report['test_images_per_class']} test images per class; learning rates chosen "
             f"on {report['val_images_per_class']} held-out training images per base class: "
             + ", ".join(f"{m} {lr:g}" for m, lr in report["selected_lr"].items())
             + f". {report['seconds']:.0f} s.", "",
             "## Average over domains", "", "| method | base | new | HM |", "|---|---|---|---|"]
    for m, r in report["average"].items():
        lines.append(f"| {m} | {_pct(r['base'])} | {_pct(r['new'])} | {_pct(r['hm'])} |")
    for d, by_method in report["domains"].items():
        lines += ["", f"## {d}", "", "| method | base | new | HM |", "|---|---|---|---|"]
        for m, r in by_method.items():
            lines.append(f"| {m} | {_pct(r['base'])} | {_pct(r['new'])} | {_pct(r['hm'])} |")
    sweeps = {k: v for k, v in report["lr_sweep"].items() if k in ("clipfit", "full-ft")}
    zs = report["lr_sweep"]["zero-shot"]
    lines += ["", (f"## Learning-rate sweep (seed {report['lr_sweep']['seeds'][0]}, both splits, "
                   f"average over domains; zero-shot on these cells: HM {_pct(zs['hm'])})"), ""]
    for method, sweep in sweeps.items():
        lines += [f"{method}: HM spread {100 * sweep['hm_spread']:.1f} points", "",
                  "| lr | base | new | HM | val |", "|---|---|---|---|---|"]
        for lr, r in sweep["results"].items():
            lines.append(f"| {float(lr):g} | {_pct(r['base'])} | {_pct(r['new'])} | "
                         f"{_pct(r['hm'])} | {_pct(r['val'])} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main() -> None:
    from bench.domains import DOMAINS
    from registry.settings import Settings

    parser = argparse.ArgumentParser(prog="python -m bench.replicate",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for replication.md / .json")
    parser.add_argument("--domains", default="sketch,blur,pixelate",
                        help=f"comma-separated, from {', '.join(DOMAINS)}")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="worker processes (default: one per core)")
    parser.add_argument("--cache-dir", default=None,
                        help="weights directory (default: Settings().weights_dir: "
                             "CLIPFIT_WEIGHTS_DIR or .env, else ~/.cache/clipfit/weights)")
    args = parser.parse_args()
    report = run_study(Path(args.out), domains=args.domains.split(","),
                       seeds=[int(s) for s in args.seeds.split(",")], epochs=args.epochs,
                       jobs=args.jobs,
                       weights_dir=str(args.cache_dir or Settings().weights_dir),
                       progress=lambda m: print(m, file=sys.stderr, flush=True))
    print((Path(args.out) / "replication.md").read_text())
    print(json.dumps({"average": report["average"], "seconds": report["seconds"]}))


if __name__ == "__main__":
    main()
