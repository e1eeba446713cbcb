"""bench/gpu_check.sh as the lent GPU machine will run it (issue 23), rehearsed on this CPU.

The machine's python3 has torch, torchvision, numpy, pillow, safetensors, torchmetrics, httpx
and tqdm (the base) and reaches no index; everything else must come from the carried wheels
(bench/gpu_requirements.txt). Here the check runs in a throwaway venv that links only the
base and the carried distributions from .venv (bench/gpu_venv.py: seconds, no download), so a
wheel missing from the list fails here, in CI. ``bash bench/gpu_rehearsal.sh`` goes further
(the downloaded cp312 wheels installed with --target on CPython 3.12 with the machine's torch
2.11); it downloads about 4 GB the first time, so CI does not run it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

from bench.gpu_venv import BASE, MARKERS, canon, carried, closure

ROOT = Path(__file__).resolve().parents[2]
# the machine's own torch is used: never carried
NEVER_CARRIED = re.compile(r"^(torch|torchvision|triton|nvidia-.*|cuda-.*)$")


def test_the_carried_wheels_are_pinned_name_every_dependency_and_never_torch():
    lines = [line.split("#", 1)[0].strip()
             for line in (ROOT / "bench" / "gpu_requirements.txt").read_text().splitlines()]
    lines = [line for line in lines if line]
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+==[A-Za-z0-9.+]+", line) for line in lines)
    pins = carried()
    assert len(pins) == len(set(pins)) == len(lines)
    assert not [n for n in pins if NEVER_CARRIED.match(n)]
    base = closure(BASE)
    optional = {"timm", "huggingface-hub"}  # open_clip imports them only when present
    missing = {}
    for name in pins:
        for text in metadata.distribution(name).requires or []:
            req = Requirement(text)
            if req.marker and not req.marker.evaluate(MARKERS | {"extra": ""}):
                continue
            if canon(req.name) not in set(pins) | base | optional:
                missing.setdefault(name, []).append(str(req))
    assert not missing, f"add to bench/gpu_requirements.txt: {missing}"


def test_gpu_check_never_sets_the_project_up():
    script = (ROOT / "bench" / "gpu_check.sh").read_text()
    code = "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("#"))
    assert "setup.sh" not in code and ".venv" not in code
    installs = [line for line in code.splitlines() if "pip install" in line]
    assert installs and all("--no-index" in line and "--no-deps" in line for line in installs)


def test_gpu_check_runs_on_the_base_and_the_carried_packages_alone(tmp_path):
    from bench import gpu_venv

    assert gpu_venv.main([str(tmp_path / "venv"), "--carried"]) == 0
    python = tmp_path / "venv" / "bin" / "python"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CLIPFIT_", "PYTHON", "VIRTUAL_ENV"))}
    out = tmp_path / "out"
    proc = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh"), "--device", "cpu", "--tiny",
         "--no-install", "--python", str(python), "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=900, check=False)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    lines = log.splitlines()
    assert lines[0].startswith("== device") and "running on cpu" in lines[1], lines[:2]
    assert lines[1].startswith("torch "), lines[1]  # the device line comes first
    assert "No module named" not in log
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["steps"]) == {"device", "imports", "train_throughput", "train_cost",
                                     "serve_inprocess", "serve_http"}
    assert all(status.startswith("ok") for status in summary["steps"].values()), summary
    assert summary["train"]["images_per_s"] > 0
    assert summary["clipfit_vs_full"]["time_ratio"] > 0
    for path in ("in_process", "http"):
        assert {"mixed_over_raw (c/a)", "batched_over_swap_path (c/d)"} <= set(
            summary["serve"][path])
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8  # what the device tool brings back: 8 files, 2 folders down
    assert all(len(p.relative_to(out).parts) <= 3 for p in files)


def test_the_throwaway_venv_has_the_base_alone(tmp_path):
    """The run above means something only if a package outside the lists is missing."""
    from bench import gpu_venv

    assert gpu_venv.main([str(tmp_path / "venv")]) == 0
    code = ("import torch, torchvision, numpy, PIL, safetensors, torchmetrics, httpx, tqdm\n"
            "import importlib.util as u\n"
            "print([m for m in ('open_clip', 'fastapi', 'yaml', 'clipfit_core', 'pytest')"
            " if u.find_spec(m)])")
    proc = subprocess.run(
        [str(tmp_path / "venv" / "bin" / "python"), "-c", code],
        capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if not k.startswith("PYTHON")})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
