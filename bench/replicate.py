"""The replication study, v2: does ClipFit do here what the paper claims, with error bars?

Base-to-new on Fashion-MNIST domains unseen in clipfit-mini's pretraining. Everything the
study chooses or fixes is in one file, ``bench/replication_protocol.toml``, committed before
any of its test numbers was looked at: the domains (three study domains, and held-out ones on
which no choice is ever made), the data sizes, the seeds, the epochs, each method's
learning-rate and crop-scale grid, the selection rule and the default-recipe rule.

Phases, all in one run:

1. **Selection** (study domains, the selection seed, both splits): every trained method
   (ClipFit, its text-only and image-only ablations, CoOp, full fine-tuning) runs its own
   grid of learning rate x crop scale; the best mean accuracy on validation images (held-out
   *training* images of the base classes) wins; a grid whose winner is at an end is extended
   past that end and the choice is made again, until the winner is interior (or a bound /
   the extension limit is reached, which the report says).
2. **Evaluation**: each method at its chosen settings on every cell (domains x splits x
   seeds; test images drawn again per seed), zero-shot and the linear probe beside them.
3. **Default recipe** (study domains, validation images only, new classes included): among
   ClipFit's trained settings and the delta moved toward zero-shot by a factor alpha, the
   one with the best base validation accuracy whose new-class validation accuracy stays
   within the protocol's tolerance of zero-shot; then evaluated like the methods.

The report gives, for the study and the held-out domains separately, mean and standard
deviation over seeds and a 95% bootstrap interval over test images (resampled within each
cell, paired across methods) for base, new and HM, and the claims with paired intervals.

    python -m bench.replicate --out results/     # writes replication.md and replication.json

Needs the clipfit-mini checkpoint (`clipfit pretrain-mini`) and Fashion-MNIST.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import os
import sys
import time
import tomllib
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from bench.protocol import Cell, make_cell_data
from clipfit_core.evaluate import harmonic_mean
from clipfit_core.recipes import PAPER

PROTOCOL_FILE = Path(__file__).with_name("replication_protocol.toml")
TRAINED = ("clipfit", "clipfit-text", "clipfit-image", "coop", "full-ft")
LABELS = {"zero-shot": "zero-shot", "clipfit": "ClipFit",
          "clipfit-text": "ClipFit, text biases only",
          "clipfit-image": "ClipFit, image LayerNorms only", "coop": "CoOp",
          "full-ft": "full fine-tuning", "linear-probe": "linear probe (base only)",
          "recipe": "ClipFit, default recipe"}


def load_protocol(path: str | Path = PROTOCOL_FILE) -> dict:
    with open(path, "rb") as f:
        return tomllib.load(f)


# --- worker processes ------------------------------------------------------------------------

_STATE: dict = {}  # per worker process: the base model, Fashion-MNIST, built cells


def _init_worker(model: str, weights_dir: str | None, data_root: str | None, threads: int,
                 data: dict) -> None:
    import torch

    from clipfit_core.models import create_base_model
    from clipfit_core.pretrain import load_fashion_mnist

    torch.set_num_threads(threads)
    _STATE["base"] = create_base_model(model, cache_dir=weights_dir)
    extra = [data_root] if data_root else []
    _STATE["train"] = load_fashion_mnist("train", *extra)
    _STATE["test"] = load_fashion_mnist("test", *extra)
    _STATE["data"] = data
    _STATE["splits"] = {}
    _STATE["ids"] = {}


def _split(cell: Cell):
    from bench.domains import DOMAINS, to_model_input
    from bench.methods import Split

    if cell not in _STATE["splits"]:
        if len(_STATE["splits"]) > 8:  # bounded: cells come roughly in order
            _STATE["splits"].pop(next(iter(_STATE["splits"])))
        d, base = _STATE["data"], _STATE["base"]
        (tr_x, tr_y), (te_x, te_y) = _STATE["train"], _STATE["test"]
        idx = make_cell_data(cell, tr_y, te_y, shots=d["shots"],
                             val_per_class=d["val_per_class"],
                             test_per_class=d["test_per_class"])
        domain = DOMAINS[cell.domain]
        _STATE["ids"][cell] = idx

        def pixels(images, labels, i):
            return to_model_input(base, domain(images[i])), labels[i]

        _STATE["splits"][cell] = Split(
            train_rgb=domain(tr_x[idx.train]), train_labels=tr_y[idx.train],
            val=pixels(tr_x, tr_y, idx.val), test_base=pixels(te_x, te_y, idx.test_base),
            test_new=pixels(te_x, te_y, idx.test_new), val_new=pixels(tr_x, tr_y, idx.val_new),
            base_classes=cell.base_classes, new_classes=cell.new_classes)
    return _STATE["splits"][cell]


def _run(task: tuple) -> tuple:
    """One method with one setting on one cell: (task, score with the test images' ids)."""
    task, result = _run_method(task)
    idx = _STATE["ids"][task[0]]
    for score in [result, *result.get("alphas", {}).values()]:
        if score.get("correct") is not None:
            score["ids"] = {"base": idx.test_base, "new": idx.test_new}
    return task, result


def _run_method(task: tuple) -> tuple:
    from bench import methods

    cell, method, setting = task
    s = dict(setting)
    base, split, d = _STATE["base"], _split(cell), _STATE["data"]
    kw = {"epochs": s.get("epochs", d["epochs"]), "seed": cell.seed,
          "test": s.get("test", True)}
    if method == "zero-shot":
        return task, methods.zero_shot(base, split, kw["test"])
    if method == "linear-probe":
        return task, methods.linear_probe(base, split, weight_decays=s["weight_decay"])
    if method.startswith("clipfit"):
        return task, methods.clipfit(
            base, split, lr=s["lr"], crop=s["crop"], text=method != "clipfit-image",
            image=method != "clipfit-text", lambda_kd=s.get("lambda", PAPER.values["lambda"]),
            alphas=tuple(s.get("alphas", ())), **kw)
    if method == "coop":
        return task, methods.coop(base, split, lr=s["lr"], crop=s["crop"], **kw)
    if method == "full-ft":
        return task, methods.full_finetune(base, split, lr=s["lr"], crop=s["crop"], **kw)
    raise ValueError(method)


def setting(**kw) -> tuple:
    """A hashable setting: sorted (name, value) pairs; lists become tuples."""
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in kw.items()))


# --- choices: pure functions of validation scores ----------------------------------------------

def select_step(lrs, crops, scores: dict, *, lr_step: float, crop_step: float,
                crop_bounds) -> tuple[tuple, list]:
    """The best (lr, crop) of a scored grid (higher is better; ties: the smaller lr, then the
    larger crop), and the values to add because it lies at an end: the next learning rate
    (x or / ``lr_step``) past that end; the next crop scale (+/- ``crop_step``) unless the
    end is a bound of the crop range."""
    lrs, crops = sorted(lrs), sorted(crops)
    best = max(((lr, c) for lr in lrs for c in crops),
               key=lambda p: (scores[p], -p[0], p[1]))
    moves = []
    if len(lrs) > 1 and best[0] == lrs[0]:
        moves.append(("lr", float(f"{lrs[0] / lr_step:.6g}")))
    elif len(lrs) > 1 and best[0] == lrs[-1]:
        moves.append(("lr", float(f"{lrs[-1] * lr_step:.6g}")))
    if best[1] == crops[0] and crops[0] > crop_bounds[0]:
        moves.append(("crop", round(max(crop_bounds[0], crops[0] - crop_step), 6)))
    elif best[1] == crops[-1] and crops[-1] < crop_bounds[1]:
        moves.append(("crop", round(min(crop_bounds[1], crops[-1] + crop_step), 6)))
    return best, moves


def select(grid: dict, score, *, lr_step: float, crop_step: float, crop_bounds,
           max_extensions: int) -> dict:
    """Choose (lr, crop) by ``score(lr, crop)``, extending the grid past an end that wins
    until the winner is interior or ``max_extensions`` values were added. ``score`` returns
    None for a point not measured yet: then only ``{"pending": [points]}`` comes back, so a
    caller can run exactly those and ask again. Otherwise returns the choice,
    every scored point, the extensions made, and whether each coordinate ended interior
    (a crop scale at a bound of its range counts as interior: there is nothing past it)."""
    lrs, crops = sorted(grid["lr"]), sorted(grid["crop"])
    scores, log = {}, []
    while True:
        scores.update({(lr, c): score(lr, c) for lr in lrs for c in crops
                       if (lr, c) not in scores})
        if None in scores.values():  # not all run yet: the caller runs them and asks again
            return {"pending": [p for p, v in scores.items() if v is None]}
        best, moves = select_step(lrs, crops, scores, lr_step=lr_step, crop_step=crop_step,
                                  crop_bounds=crop_bounds)
        if not moves or len(log) >= max_extensions:
            break
        for name, value in moves[:max_extensions - len(log)]:
            (lrs if name == "lr" else crops).append(value)
            log.append({name: value})
        lrs, crops = sorted(lrs), sorted(crops)
    return {"lr": best[0], "crop": best[1], "scores": scores, "extensions": log,
            "lr_interior": lrs[0] < best[0] < lrs[-1],
            "crop_interior": crops[0] < best[1] < crops[-1] or best[1] in tuple(crop_bounds)}


def choose_recipe(candidates: dict, zero_shot_val_new: float, tolerance: float) -> tuple:
    """The protocol's default-recipe rule: among candidates (key -> mean validation accuracy
    on base and new classes) whose new-class accuracy is at least zero-shot's minus
    ``tolerance``, the best base accuracy (ties: the smaller alpha, i.e. closer to
    zero-shot). None when no candidate qualifies."""
    ok = {k: v for k, v in candidates.items() if v["val_new"] >= zero_shot_val_new - tolerance}
    if not ok:
        return None
    return max(ok, key=lambda k: (ok[k]["val"], -dict(k).get("alpha", 1.0)))


# --- statistics ------------------------------------------------------------------------------

def group_stats(results: dict, cells: list[Cell], methods: list[str], *, boot: int = 1000,
                seed: int = 0) -> dict:
    """results[method][cell] -> {"base", "new", "correct": {"base": bools, "new": bools},
    "ids": {"base": test image ids, "new": ...}}.

    For each method: mean over cells of base and new, HM of those means; standard deviation
    over seeds (sample std of each seed's group mean, ddof=1); a 95% interval from a
    hierarchical bootstrap: the seeds are resampled (training variance), and within a seed
    its test images, one draw for every domain, split and method of that seed (they share
    the seed's test images), so the differences between methods (``diff``) are paired."""
    rng = np.random.default_rng(seed)
    present = [m for m in methods if cells and all(c in results.get(m, {}) for c in cells)]
    seeds = sorted({c.seed for c in cells})
    out = {"methods": {}, "diff": {}, "cells": len(cells), "seeds": seeds, "boot": boot}
    if not present:
        return out
    ref = present[0]
    per_seed_draws = {m: {"base": [], "new": []} for m in present}  # part -> [(boot,)] by seed
    for s in seeds:
        seed_cells = [c for c in cells if c.seed == s]
        pool = np.unique(np.concatenate([results[ref][c]["ids"][part] for c in seed_cells
                                         for part in ("base", "new")]))
        weights = rng.multinomial(len(pool), np.full(len(pool), 1 / len(pool)),
                                  size=boot).astype(np.float32)
        for part in ("base", "new"):
            sums = {m: np.zeros(boot) for m in present}
            for c in seed_cells:
                w = weights[:, np.searchsorted(pool, results[ref][c]["ids"][part])]
                total = np.maximum(w.sum(axis=1), 1.0)
                for m in present:
                    right = results[m][c]["correct"][part]
                    if right is not None:
                        sums[m] += (w @ right.astype(np.float32)) / total
            for m in present:
                per_seed_draws[m][part].append(sums[m] / len(seed_cells))
    pick = rng.integers(0, len(seeds), size=(boot, len(seeds)))
    rows_of_draw = np.arange(boot)[:, None]
    draws = {}
    for m in present:
        rows = [results[m][c] for c in cells]
        base = float(np.mean([r["base"] for r in rows]))
        new = _maybe_mean([r["new"] for r in rows])
        stat = {"base": base, "new": new, "hm": harmonic_mean(base, new) if new is not None
                else None}
        b = np.stack(per_seed_draws[m]["base"])[pick, rows_of_draw].mean(axis=1)
        n = np.stack(per_seed_draws[m]["new"])[pick, rows_of_draw].mean(axis=1) \
            if new is not None else None
        draws[m] = {"base": b, "new": n, "hm": 2 * b * n / (b + n) if n is not None else None}
        for key in ("base", "new", "hm"):
            if stat[key] is None:
                stat[f"{key}_ci"] = stat[f"{key}_std"] = None
                continue
            stat[f"{key}_ci"] = [float(np.percentile(draws[m][key], 2.5)),
                                 float(np.percentile(draws[m][key], 97.5))]
            values = [_seed_value(results[m], cells, s, key) for s in seeds]
            stat[f"{key}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else None
        out["methods"][m] = stat
    for a, b in itertools.permutations(present, 2):
        out["diff"][f"{a} - {b}"] = {
            key: {"mean": out["methods"][a][key] - out["methods"][b][key],
                  "ci": [float(np.percentile(draws[a][key] - draws[b][key], 2.5)),
                         float(np.percentile(draws[a][key] - draws[b][key], 97.5))],
                  "per_seed": [_seed_value(results[a], cells, s, key)
                               - _seed_value(results[b], cells, s, key) for s in seeds]}
            for key in ("base", "new", "hm")
            if draws[a][key] is not None and draws[b][key] is not None}
    return out


def _seed_value(by_cell: dict, cells: list[Cell], seed: int, key: str) -> float:
    """One seed's group mean of base or new, or the HM of those two."""
    sub = [by_cell[c] for c in cells if c.seed == seed]
    base = float(np.mean([r["base"] for r in sub]))
    new = _maybe_mean([r["new"] for r in sub])
    return {"base": base, "new": new, "hm": harmonic_mean(base, new) if new is not None
            else None}[key]


def _maybe_mean(values):
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def verdict(diff: dict, threshold: float) -> str:
    """Whether ``mean difference >= threshold`` holds, with its 95% interval."""
    lo, hi = diff["ci"]
    if lo >= threshold:
        return "holds"
    if hi < threshold:
        return "does not hold"
    return "holds on the mean only" if diff["mean"] >= threshold else "misses on the mean"


def claims(stats: dict, method: str) -> list[dict]:
    """The issue's claims for ``method`` against zero-shot and CoOp in one group of domains."""
    out = []
    for name, pair, key, threshold in (
            ("HM >= zero-shot HM + 5", f"{method} - zero-shot", "hm", 0.05),
            ("new >= zero-shot new - 1", f"{method} - zero-shot", "new", -0.01),
            ("HM >= CoOp HM", f"{method} - coop", "hm", 0.0)):
        d = stats["diff"].get(pair, {}).get(key)
        if d is not None:
            out.append({"claim": name, "difference": d["mean"], "ci": d["ci"],
                        "per_seed": d["per_seed"],
                        "threshold": threshold, "verdict": verdict(d, threshold)})
    return out


# --- the study ---------------------------------------------------------------------------------

def run_study(out_dir: Path, protocol: dict, *, jobs: int, weights_dir: str | None,
              data_root: str | None = None, progress=print) -> dict:
    start = time.perf_counter()
    data, sel, rec = protocol["data"], protocol["selection"], protocol["recipe"]
    study, held_out = protocol["domains"]["study"], protocol["domains"]["held_out"]
    seeds, splits = data["seeds"], data["splits"]
    cells = {"study": [Cell(d, s, seed) for d in study for s in splits for seed in seeds],
             "held-out": [Cell(d, s, seed) for d in held_out for s in splits for seed in seeds]}
    sel_cells = [Cell(d, s, sel["seed"]) for d, s in sel["cells"]]
    runs: dict = defaultdict(dict)  # (method, setting) -> {cell: score}
    threads = max(1, (os.cpu_count() or 1) // jobs)
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_init_worker,
                             initargs=(data["model"], weights_dir, data_root, threads,
                                       data)) as pool:
        def execute(tasks, label):
            tasks = [t for t in dict.fromkeys(tasks) if t[0] not in runs.get(t[1:], {})]
            # cell by cell: a worker keeps the few cells it built last
            tasks.sort(key=lambda t: (t[0].seed, t[0].domain, t[0].split))
            t0 = time.perf_counter()
            for i, ((cell, method, st), result) in enumerate(pool.map(_run, tasks), 1):
                runs[(method, st)][cell] = result
                if i % max(1, len(tasks) // 5) == 0 or i == len(tasks):
                    progress(f"{label}: {i}/{len(tasks)} runs, {time.perf_counter() - t0:.0f}s")

        def mean_val(method, st, key="val"):
            return float(np.mean([runs[(method, st)][c][key] for c in sel_cells]))

        def trained_setting(method, lr, crop, test=False, **extra):
            # Runs that choose are scored on validation images only (test=False); the
            # defaults are left out, so one setting has one key.
            defaults = {"lambda": PAPER.values["lambda"], "epochs": data["epochs"]}
            st = {"lr": lr, "crop": crop, "test": test,
                  **{k: v for k, v in extra.items() if defaults.get(k) != v}}
            if method == "clipfit":
                st["alphas"] = rec["alphas"]
            return setting(**st)

        # Phase 1: selection, each method on its own grid, extended while a winner is at an
        # end. Every round runs the points all methods still need, in one batch of tasks.
        def score_of(m):
            def score(lr, crop):
                st = trained_setting(m, lr, crop)
                if not all(c in runs.get((m, st), {}) for c in sel_cells):
                    return None
                return mean_val(m, st)
            return score

        choices: dict = {}
        while len(choices) < len(TRAINED):
            tasks = []
            for m in TRAINED:
                if m in choices:
                    continue
                choice = select(protocol["grids"][m], score_of(m), lr_step=sel["lr_step"],
                                crop_step=sel["crop_step"], crop_bounds=sel["crop_bounds"],
                                max_extensions=sel["max_extensions"])
                if "pending" in choice:
                    tasks += [(c, m, trained_setting(m, lr, crop))
                              for lr, crop in choice["pending"] for c in sel_cells]
                else:
                    choices[m] = choice
            execute(tasks, "selection")

        # Phase 3's search needs only validation numbers, on the recipe's cells (by default
        # the selection cells): the protocol's lambda x epoch variants at ClipFit's choice,
        # and any other ClipFit run measured on all those cells (on the selection cells: the
        # whole grid), each at every alpha.
        rec_cells = [Cell(d, s, sel["seed"]) for d, s in rec.get("cells", sel["cells"])]
        cf = choices["clipfit"]
        variants = [trained_setting("clipfit", cf["lr"], cf["crop"], **{"lambda": lam,
                                                                        "epochs": ep})
                    for lam in rec["lambdas"] for ep in rec["epochs"]]
        execute([(c, "clipfit", st) for st in variants for c in rec_cells],
                "default-recipe variants")
        zs_sel = setting(test=False)
        execute([(c, "zero-shot", zs_sel) for c in rec_cells], "zero-shot (recipe cells)")
        zs_val_new = float(np.mean([runs[("zero-shot", zs_sel)][c]["val_new"]
                                    for c in rec_cells]))
        candidates = {}
        for (m, st), by_cell in list(runs.items()):
            s = dict(st)
            if m != "clipfit" or s["test"] or not all(c in by_cell for c in rec_cells):
                continue
            for alpha in rec["alphas"]:
                key = setting(lr=s["lr"], crop=s["crop"], alpha=alpha,
                              epochs=s.get("epochs", data["epochs"]),
                              **{"lambda": s.get("lambda", PAPER.values["lambda"])})
                candidates[key] = {part: float(np.mean([by_cell[c]["alphas"][alpha][part]
                                                        for c in rec_cells]))
                                   for part in ("val", "val_new")}
        recipe = choose_recipe(candidates, zs_val_new, rec["new_tolerance"])
        recipe_train = None
        if recipe is not None:  # the same training, scored on the test images this time
            r = dict(recipe)
            recipe_train = trained_setting("clipfit", r["lr"], r["crop"], test=True,
                                           **{"lambda": r["lambda"], "epochs": r["epochs"]})

        # Phase 2: every method at its choice on every cell, scored on the test images (the
        # selection runs are not reused: they never saw a test image).
        all_cells = cells["study"] + cells["held-out"]
        final = {m: trained_setting(m, choices[m]["lr"], choices[m]["crop"], test=True)
                 for m in TRAINED}
        tasks = [(c, "zero-shot", ()) for c in all_cells]
        tasks += [(c, "linear-probe", setting(weight_decay=protocol["grids"]["linear-probe"]
                                              ["weight_decay"])) for c in all_cells]
        tasks += [(c, m, st) for m, st in final.items() for c in all_cells]
        if recipe_train is not None:
            tasks += [(c, "clipfit", recipe_train) for c in all_cells]
        execute(tasks, "evaluation (every method, every cell)")

    results = {m: runs[(m, st)] for m, st in final.items()}
    results["zero-shot"] = runs[("zero-shot", ())]
    results["linear-probe"] = runs[("linear-probe", setting(
        weight_decay=protocol["grids"]["linear-probe"]["weight_decay"]))]
    if recipe is not None:
        alpha = dict(recipe)["alpha"]
        results["recipe"] = {c: r["alphas"][alpha] for c, r in runs[("clipfit",
                                                                     recipe_train)].items()}
    order = ["zero-shot", *TRAINED, "recipe", "linear-probe"]
    report = {"protocol": protocol, "groups": {}, "domains": {}, "selection": {},
              "recipe": None, "seconds": None}
    for group, group_cells in cells.items():
        stats = group_stats(results, group_cells, order, boot=protocol["report"]["bootstrap"])
        stats["claims"] = {m: claims(stats, m) for m in ("clipfit", "recipe")
                           if m in stats["methods"]}
        report["groups"][group] = stats
    for d in study + held_out:
        dc = [c for c in all_cells if c.domain == d]
        report["domains"][d] = group_stats(results, dc, order, boot=200)["methods"]
    for m, choice in choices.items():
        report["selection"][m] = {
            "lr": choice["lr"], "crop": choice["crop"], "extensions": choice["extensions"],
            "lr_interior": choice["lr_interior"], "crop_interior": choice["crop_interior"],
            "val": {f"{lr:g}/{c:g}": v for (lr, c), v in sorted(choice["scores"].items())}}
    report["recipe"] = {
        "rule": rec["rule"], "zero_shot_val_new": zs_val_new,
        "cells": [[c.domain, c.split, c.seed] for c in rec_cells],
        "chosen": dict(recipe) if recipe else None,
        "candidates": [{**dict(k), **v} for k, v in sorted(
            candidates.items(), key=lambda kv: -kv[1]["val"])]}
    report["seconds"] = round(time.perf_counter() - start, 1)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "replication.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out_dir / "replication.md").write_text(to_markdown(report))
    return report


# --- the report ----------------------------------------------------------------------------------

def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _cell(stat: dict, key: str) -> str:
    if stat.get(key) is None:
        return "-"
    std = stat.get(f"{key}_std")
    lo, hi = stat[f"{key}_ci"]
    return (f"{_pct(stat[key])}" + (f" ± {100 * std:.1f}" if std is not None else "")
            + f" [{_pct(lo)}, {_pct(hi)}]")


def method_table(methods: dict) -> list[str]:
    lines = ["| method | base | new | HM |", "|---|---|---|---|"]
    for m, stat in methods.items():
        lines.append(f"| {LABELS.get(m, m)} | {_cell(stat, 'base')} | {_cell(stat, 'new')} | "
                     f"{_cell(stat, 'hm')} |")
    return lines


def to_markdown(report: dict) -> str:
    p = report["protocol"]
    d = p["data"]
    lines = [
        "# ClipFit replication v2 on clipfit-mini (Fashion-MNIST domains)", "",
        (f"Protocol: `bench/replication_protocol.toml`. Base-to-new, {d['shots']} shots per base "
        f"class, splits {'/'.join(d['splits'])}, seeds {d['seeds']}, {d['epochs']} epochs, "
        f"{d['test_per_class']} test images per class drawn per seed; choices on "
        f"{d['val_per_class']} validation (training) images per class. {report['seconds']:.0f} s."),
        "", ("Cells: mean ± standard deviation over seeds [95% interval of a hierarchical "
        "bootstrap: seeds, then the test images of each seed]."), ""]
    names = {"study": "Study domains (" + ", ".join(p["domains"]["study"]) + ")",
             "held-out": "Held-out domains (" + ", ".join(p["domains"]["held_out"])
             + "): no choice made on them"}
    for group, stats in report["groups"].items():
        lines += [f"## {names[group]}", ""] + method_table(stats["methods"]) + [""]
        for m, rows in stats["claims"].items():
            lines += [f"Claims for {LABELS[m]}:", ""]
            for r in rows:
                seeds = ", ".join(f"{100 * v:+.1f}" for v in r["per_seed"])
                lines.append(f"- {r['claim']}: difference {100 * r['difference']:+.1f} points "
                             f"[{100 * r['ci'][0]:+.1f}, {100 * r['ci'][1]:+.1f}] (per seed: "
                             f"{seeds}): **{r['verdict']}**")
            lines.append("")
    lines += ["## Per domain (mean over splits and seeds [95% interval])", ""]
    for dom, methods in report["domains"].items():
        lines += [f"### {dom}", ""] + method_table(
            {m: {**s, "base_std": None, "new_std": None, "hm_std": None}
             for m, s in methods.items()}) + [""]
    lines += ["## Selection (mean validation accuracy, base classes, selection cells)", ""]
    for m, s in report["selection"].items():
        grid = ", ".join(f"{k}: {_pct(v)}" for k, v in s["val"].items())
        ends = []
        if not s["lr_interior"]:
            ends.append("learning rate at an end after the allowed extensions")
        if not s["crop_interior"]:
            ends.append("crop scale at an end after the allowed extensions")
        lines.append(f"- {LABELS[m]}: lr {s['lr']:g}, crop {s['crop']:g}"
                     + (f" (extended: {s['extensions']})" if s["extensions"] else "")
                     + (f"; {'; '.join(ends)}" if ends else "") + f". lr/crop: {grid}")
    r = report["recipe"]
    lines += ["", "## Default recipe search (validation images, study domains: "
              + ", ".join(f"{d}/{sp}" for d, sp, _ in r["cells"]) + ")", "",
              (f"Rule: {r['rule']} Zero-shot new-class validation accuracy "
              f"{_pct(r['zero_shot_val_new'])}."), "",
              f"Chosen: {r['chosen']}", "", "| setting | val base | val new |", "|---|---|---|"]
    for c in r["candidates"][:12]:
        label = ", ".join(f"{k} {v:g}" for k, v in c.items() if k not in ("val", "val_new"))
        lines.append(f"| {label} | {_pct(c['val'])} | {_pct(c['val_new'])} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    from registry.settings import Settings

    parser = argparse.ArgumentParser(prog="python -m bench.replicate",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for replication.md / .json")
    parser.add_argument("--protocol", default=str(PROTOCOL_FILE),
                        help="the protocol file (default: the committed one)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="worker processes (default: one per core)")
    parser.add_argument("--cache-dir", default=None,
                        help="weights directory (default: Settings().weights_dir: "
                             "CLIPFIT_WEIGHTS_DIR or .env, else ~/.cache/clipfit/weights)")
    parser.add_argument("--data-root", default=None,
                        help="folder of Fashion-MNIST's four idx files (default: Debian's)")
    args = parser.parse_args()
    report = run_study(Path(args.out), load_protocol(args.protocol), jobs=args.jobs,
                       weights_dir=str(args.cache_dir or Settings().weights_dir),
                       data_root=args.data_root,
                       progress=lambda m: print(m, file=sys.stderr, flush=True))
    print((Path(args.out) / "replication.md").read_text())
    print(json.dumps({"seconds": report["seconds"]}))


if __name__ == "__main__":
    main()
