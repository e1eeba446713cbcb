"""Training cost of ClipFit against full fine-tuning, side by side: step time and peak memory.

    python -m bench.train_cost --model ViT-B-16 --batch-size 8 --steps 5 --out results/

Random weights (cost does not depend on them), one synthetic batch, the same loss for both
(ClipFit's: cross-entropy on CLIP logits + the text-feature distillation term, text features
recomputed every step as in training):

- ``clipfit``: only the ClipFit tensors require gradients (46,080 numbers for ViT-B-16);
  SGD with momentum, as the recipe; attention inputs laid out as ``train_clipfit`` does
  (``frozen_attention_layout``);
- ``full``: every weight of both towers (the logit scale excepted), AdamW.

Each method runs in a fresh subprocess, one after the other, so their memory does not mix:
after the model and batch are made, the process's peak-RSS mark is reset
(``/proc/self/clear_refs``), one untimed step allocates gradients and optimizer state, then
``--steps`` timed steps; it reports the median step time, the peak RSS of the whole process
(VmHWM: weights, activations, gradients, optimizer state) and that peak minus the RSS before
the first step (the cost of training on top of holding the model). "Above the libraries"
subtracts the RSS right after the imports, before anything is made (torch's and open_clip's
code, the same in both: the part of a process that a GPU's allocated-memory counter never
sees). Linux only (/proc).
On CUDA it reports ``torch.cuda.max_memory_allocated`` instead of RSS.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure(method: str, model_spec: str, batch: int, classes: int, steps: int,
            device: str) -> dict:
    """One method's step time and memory (run in a subprocess of its own)."""
    from clipfit_core.classify import class_features_from_tokens, logits_for, tokenize_prompts
    from clipfit_core.config import TrainConfig
    from clipfit_core.models import create_base_model
    from clipfit_core.params import count_trainable, mark_trainable
    from clipfit_core.train import clipfit_loss, frozen_attention_layout

    libraries = _rss_kib("VmRSS") * 1024  # torch, open_clip & co. imported, nothing made yet
    torch.manual_seed(0)
    base = create_base_model(model_spec, device=device, fingerprint=False)
    model = base.model
    paper = TrainConfig()  # the paper's recipe: its optimizer and distillation weight
    if method == "clipfit":
        params = list(mark_trainable(model).values())
        optimizer = torch.optim.SGD(params, lr=paper.lr, momentum=paper.momentum,
                                    weight_decay=paper.weight_decay)
    else:
        model.requires_grad_(True)
        model.logit_scale.requires_grad_(False)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.1)
    trained = sum(p.numel() for p in params)
    tokens = tokenize_prompts(base, [f"class number {i}" for i in range(classes)],
                              ["a photo of a {}."])
    with torch.no_grad():
        zs_text = class_features_from_tokens(model, tokens, 1).float()
    g = torch.Generator().manual_seed(1)
    images = torch.randn(batch, 3, base.image_size, base.image_size, generator=g).to(device)
    labels = torch.randint(0, classes, (batch,), generator=g).to(device)

    def step() -> float:
        start = time.perf_counter()
        model.train()
        text = class_features_from_tokens(model, tokens, 1)
        img = F.normalize(model.encode_image(images), dim=-1)
        loss, _, _ = clipfit_loss(logits_for(base, img.float(), text.float()), labels, text,
                                  zs_text, paper.lambda_kd)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    layout = contextlib.ExitStack()  # held until the function returns
    if method == "clipfit":  # as train_clipfit runs it
        layout.enter_context(frozen_attention_layout(model))
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        before = _rss_kib("VmRSS") * 1024
    first = step()
    times = [step() for _ in range(steps)]
    peak = torch.cuda.max_memory_allocated() if cuda else _rss_kib("VmHWM") * 1024
    return {"method": method, "trained_numbers": trained,
            "clipfit_numbers": count_trainable(model), "batch_size": batch,
            "classes": classes, "first_step_s": round(first, 3),
            "step_s_median": round(statistics.median(times), 3),
            "step_s_all": [round(t, 3) for t in times],
            "memory": "cuda allocated" if cuda else "process RSS",
            "before_first_step_mib": round(before / 2**20, 1),
            "peak_mib": round(peak / 2**20, 1),
            "libraries_mib": round(libraries / 2**20, 1) if not cuda else 0.0,
            "peak_above_libraries_mib": round((peak - (0 if cuda else libraries)) / 2**20, 1),
            "training_mib": round((peak - before) / 2**20, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.train_cost",
                                description=__doc__.splitlines()[0])
    p.add_argument("--model", default="ViT-B-16")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=None, help="folder for train_cost.json")
    p.add_argument("--one", choices=["clipfit", "full"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:  # the subprocess
        print(json.dumps(measure(args.one, args.model, args.batch_size, args.classes,
                                 args.steps, args.device)))
        return 0
    rows = {}
    for method in ("clipfit", "full"):
        print(f"{method}: {args.model}, batch {args.batch_size}, {args.steps} steps on "
              f"{args.device} ...", flush=True)
        out = subprocess.run(
            [sys.executable, "-m", "bench.train_cost", "--one", method, "--model", args.model,
             "--batch-size", str(args.batch_size), "--classes", str(args.classes),
             "--steps", str(args.steps), "--device", args.device],
            capture_output=True, text=True, check=False,
            cwd=Path(__file__).resolve().parent.parent)
        if out.returncode != 0:
            print(out.stderr[-3000:], file=sys.stderr)
            return 1
        rows[method] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"    {rows[method]}", flush=True)
    c, f = rows["clipfit"], rows["full"]
    result = {"model": args.model, "device": args.device, "clipfit": c, "full": f,
              "time_ratio": round(c["step_s_median"] / f["step_s_median"], 3),
              "peak_memory_ratio": round(c["peak_mib"] / f["peak_mib"], 3),
              "peak_above_libraries_ratio": round(
                  c["peak_above_libraries_mib"] / f["peak_above_libraries_mib"], 3),
              "training_memory_ratio": round(c["training_mib"] / max(f["training_mib"], 1e-9),
                                             3)}
    result["goals"] = {"time <= 0.7 x full": result["time_ratio"] <= 0.7,
                       "peak memory <= 0.5 x full (above the libraries)":
                           result["peak_above_libraries_ratio"] <= 0.5,
                       "peak memory <= 0.5 x full (whole process)":
                           result["peak_memory_ratio"] <= 0.5}
    print(f"\n{args.model} on {args.device}, batch {args.batch_size}, {args.classes} classes")
    print(f"{'':10}{'trained':>12}{'step s':>9}{'peak MiB':>10}{'above libs':>12}"
          f"{'training MiB':>14}")
    for name, r in rows.items():
        print(f"{name:10}{r['trained_numbers']:>12,}{r['step_s_median']:>9}"
              f"{r['peak_mib']:>10}{r['peak_above_libraries_mib']:>12}{r['training_mib']:>14}")
    print(f"ClipFit / full: time {result['time_ratio']}, peak memory "
          f"{result['peak_memory_ratio']} (above the libraries "
          f"{result['peak_above_libraries_ratio']}), training memory "
          f"{result['training_memory_ratio']}")
    print("goals: " + ", ".join(f"{k}: {'met' if ok else 'MISSED'}"
                                for k, ok in result["goals"].items()))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "train_cost.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
