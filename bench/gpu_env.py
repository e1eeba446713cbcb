"""The checks around ``bench/gpu_check.sh`` (issue 23), on whatever Python runs it.

    python -m bench.gpu_env device --device cuda --out DIR    # the torch / CUDA / device line
    python -m bench.gpu_env imports [--requirements FILE]     # every module the check needs
    python -m bench.gpu_env summary DIR                       # the figures, from the JSON files

``device`` imports torch only (the machine's own) and writes ``DIR/device.json``.
``imports`` imports what each benchmark imports and names whatever is missing; it exits 3
when the benchmarks cannot run at all, 4 when only the HTTP service is missing (the serving
benchmark then runs in-process only), 0 otherwise. It also reads the metadata of the carried
packages (bench/gpu_requirements.txt) and warns where one needs a version of another that is
not the one found. ``summary`` collects the ratios the docs want into ``DIR/summary.json``.
Standard library and torch only: nothing here may need a carried package to report that it
is missing.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import re
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "bench" / "gpu_requirements.txt"
# open_clip names these, but imports them only if present (random weights need neither)
OPTIONAL = {"timm", "huggingface-hub"}

# (module, what needs it). The machine's own packages first: a failure there is not ours.
BASE = [("torch", "everything"), ("torchvision", "open_clip, clipfit_core.models"),
        ("numpy", "everything"), ("PIL", "images"), ("safetensors", "deltas"),
        ("torchmetrics", "clipfit_core.report"), ("httpx", "bench.serve_speed"),
        ("tqdm", "open_clip")]
CORE = [("open_clip", "the model"), ("ftfy", "open_clip's tokenizer"),
        ("regex", "open_clip's tokenizer"), ("cachetools", "api.inference"),
        ("starlette", "api.inference"), ("pydantic", "registry.settings"),
        ("pydantic_settings", "registry.settings"), ("sqlalchemy", "registry"),
        ("alembic", "registry.migrate"), ("mako", "alembic"),
        ("clipfit_core.train", "training"), ("clipfit_core.serving", "the batching engine"),
        ("api.inference", "serving in-process"), ("registry.crud", "serving (adapters)"),
        ("registry.migrate", "serving (adapters)"),
        ("bench.train_throughput", "training throughput"),
        ("bench.train_cost", "ClipFit vs full fine-tuning"),
        ("bench.serve_speed", "the serving benchmark")]
SERVICE = [("fastapi", "api.app"), ("uvicorn", "clipfit serve"),
           ("multipart", "fastapi forms"), ("sse_starlette", "api"), ("limits", "api"),
           ("prometheus_client", "api.metrics"), ("celery", "service.queue"),
           ("redis", "the broker check"), ("api.app", "clipfit serve"),
           ("clipfit.serve", "clipfit serve")]


# ---------------------------------------------------------------- device


def device(args: argparse.Namespace) -> int:
    import torch

    info = {"python": platform.python_version(), "executable": sys.executable,
            "torch": torch.__version__, "cuda": torch.version.cuda,
            "cuda_available": torch.cuda.is_available(), "device": args.device}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info |= {"gpu": props.name, "capability": f"sm_{props.major}{props.minor}",
                 "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                 "multiprocessors": props.multi_processor_count}
    line = (f"torch {info['torch']} | CUDA {info['cuda']} | "
            + (f"{info['gpu']} ({info['capability']}, {info['gpu_memory_gib']} GiB)"
               if "gpu" in info else "no GPU visible")
            + f" | Python {info['python']} ({info['executable']}) | running on {args.device}")
    print(line, flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "device.json").write_text(json.dumps(info | {"line": line}, indent=2)
                                              + "\n")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_env: --device cuda, but torch sees no CUDA device", file=sys.stderr)
        return 3
    return 0


# ---------------------------------------------------------------- imports


def try_imports(group: list[tuple[str, str]]) -> list[str]:
    problems = []
    for module, why in group:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            problems.append(f"{module} (for {why}): no module named {e.name!r}")
        except Exception as e:  # noqa: BLE001 (a broken package: named with its error)
            last = traceback.extract_tb(e.__traceback__)[-1]
            problems.append(f"{module} (for {why}): {type(e).__name__}: {e} "
                            f"[{Path(last.filename).name}:{last.lineno}]")
    return problems


def requirement_warnings(path: Path) -> list[str]:
    """Where a carried package needs a version of another that is not the one found."""
    from importlib import metadata

    try:
        from packaging.markers import UndefinedEnvironmentName
        from packaging.requirements import Requirement
    except ImportError:
        return ["(packaging is not importable: requirement versions not checked)"]
    names = [re.split(r"[=<>!~ ;#]", line.strip(), maxsplit=1)[0]
             for line in path.read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    out = []
    for name in names:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:  # the import check names what it breaks
            continue
        for text in dist.requires or []:
            req = Requirement(text)
            if req.name.lower().replace("_", "-") in OPTIONAL:
                continue
            try:
                if req.marker and not req.marker.evaluate({"extra": ""}):
                    continue
            except UndefinedEnvironmentName:
                continue
            try:
                found = metadata.version(req.name)
            except metadata.PackageNotFoundError:
                out.append(f"{name} {dist.version} needs {req}: not installed")
                continue
            if req.specifier and not req.specifier.contains(found, prereleases=True):
                out.append(f"{name} {dist.version} needs {req}: found {found}")
    return out


def imports(args: argparse.Namespace) -> int:
    base, core = try_imports(BASE), try_imports(CORE)
    service = try_imports(SERVICE) if not (base or core) else []
    for title, problems in (("the machine's own packages", base), ("the benchmarks", core),
                            ("the HTTP service", service)):
        if problems:
            print(f"gpu_env: MISSING for {title}:", file=sys.stderr)
            for p in problems:
                print(f"    {p}", file=sys.stderr)
    warnings = requirement_warnings(args.requirements) if args.requirements.exists() else []
    for w in warnings:
        print(f"gpu_env: warning: {w}", file=sys.stderr)
    if base or core:
        print("gpu_env: the benchmarks cannot run. Add the missing package's wheel to "
              "bench/gpu_requirements.txt, run bench/gpu_wheels.sh and the rehearsal "
              "(bench/gpu_rehearsal.sh) here, then carry bench/gpu-wheels again.",
              file=sys.stderr)
        return 3
    ok = len(BASE) + len(CORE) + len(SERVICE) - len(service)
    print(f"gpu_env: imports ok ({ok} modules"
          + (", the HTTP service missing: serving runs in-process only)" if service else ")")
          + (f", {len(warnings)} requirement warning(s)" if warnings else ""), flush=True)
    return 4 if service else 0


# ---------------------------------------------------------------- summary


def _load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def summary(args: argparse.Namespace) -> int:
    out: Path = args.dir
    dev = _load(out / "device.json") or {}
    result: dict = {"device": dev.get("line"), "steps": {}}
    for line in (args.steps or "").split(";"):
        if "=" in line:
            name, status = line.split("=", 1)
            result["steps"][name] = status
    tt = _load(out / "train_throughput.json")
    if tt:
        result["train"] = {"model": tt["model"], "batch_size": tt["train"]["batch_size"],
                           "images_per_s": tt["train"]["images_per_sec"],
                           "s_per_step": tt["train"]["seconds_per_step"],
                           "text_truncation_speedup": tt["text"]["speedup"]}
    tc = _load(out / "train_cost.json")
    if tc:
        result["clipfit_vs_full"] = {
            "model": tc["model"], "batch_size": tc["clipfit"]["batch_size"],
            "memory": tc["clipfit"]["memory"],
            "step_s": {"clipfit": tc["clipfit"]["step_s_median"],
                       "full": tc["full"]["step_s_median"]},
            "peak_mib": {"clipfit": tc["clipfit"]["peak_mib"], "full": tc["full"]["peak_mib"]},
            "time_ratio": tc["time_ratio"], "peak_memory_ratio": tc["peak_memory_ratio"]}
    for path, folder in (("in_process", "serve_inprocess"), ("http", "serve_http")):
        ss = _load(out / folder / "serve_speed.json")
        if not ss:
            continue
        serve = result.setdefault("serve", {"model": ss["model"], "max_batch": ss["max_batch"],
                                            "clients": ss["clients"]})
        serve.setdefault("raw_limit_images_per_s", {})[path] = ss["a"]["images_per_s"]
        if path in ss.get("ratios", {}):
            r = ss["ratios"][path]
            serve[path] = {"mixed_over_raw (c/a)": r["c/a"], "mixed_over_one (c/b)": r["c/b"],
                           "batched_over_swap_path (c/d)": r["c/d"],
                           "big_over_before (e/e0)": r["e/e0"],
                           "images_per_s": {k: ss[k][path]["images_per_s"]
                                            for k in ("b", "c", "d", "e", "e0")}}
    (out / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n=== gpu_check summary ({out}) ===")
    print(f"device: {result['device']}")
    print("steps: " + ", ".join(f"{k} {v}" for k, v in result["steps"].items()))
    if "train" in result:
        t = result["train"]
        print(f"training ({t['model']}, batch {t['batch_size']}): {t['images_per_s']} images/s, "
              f"{t['s_per_step']} s/step; text truncation {t['text_truncation_speedup']}x")
    if "clipfit_vs_full" in result:
        c = result["clipfit_vs_full"]
        print(f"ClipFit / full fine-tuning ({c['model']}, batch {c['batch_size']}): time "
              f"{c['time_ratio']} ({c['step_s']['clipfit']} vs {c['step_s']['full']} s/step), "
              f"peak memory {c['peak_memory_ratio']} ({c['peak_mib']['clipfit']} vs "
              f"{c['peak_mib']['full']} MiB, {c['memory']})")
    if "serve" in result:
        s = result["serve"]
        print(f"serving ({s['model']}, max batch {s['max_batch']}, {s['clients']} clients): "
              f"raw limit {s['raw_limit_images_per_s']} images/s")
        for path in ("in_process", "http"):
            if path in s:
                print(f"  {path}: " + ", ".join(f"{k} = {v}" for k, v in s[path].items()
                                                 if k != "images_per_s")
                      + f"; images/s {s[path]['images_per_s']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_env",
                                description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("device")
    d.add_argument("--device", default="cuda")
    d.add_argument("--out", type=Path)
    i = sub.add_parser("imports")
    i.add_argument("--requirements", type=Path, default=REQUIREMENTS)
    s = sub.add_parser("summary")
    s.add_argument("dir", type=Path)
    s.add_argument("--steps", help="NAME=STATUS;... as gpu_check.sh ran them")
    args = p.parse_args(argv)
    return {"device": device, "imports": imports, "summary": summary}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
