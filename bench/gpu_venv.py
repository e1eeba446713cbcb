"""A throwaway venv that has only what the lent GPU machine's python3 has for us (issue 23).

    .venv/bin/python -m bench.gpu_venv DEST                  # the base alone
    .venv/bin/python -m bench.gpu_venv DEST --carried        # + bench/gpu_requirements.txt
    .venv/bin/python -m bench.gpu_venv DEST --exclude torch,torchvision   # to pip-install them

The base: torch, torchvision, numpy, pillow, safetensors, torchmetrics, httpx and tqdm with
what they need (torch's nvidia libraries, jinja2, httpx's anyio, ...), and pip. Nothing is
downloaded: the venv's site-packages holds symbolic links to this Python's own installed
files (per file where a top-level folder is shared with a distribution left out), so it
builds in seconds. Whatever else a benchmark imports is then missing, as on the machine, and
``bench/gpu_check.sh --python DEST/bin/python`` shows it. Never install over a linked
distribution with pip there (it would delete the linked files): ``--exclude`` those first.
"""

from __future__ import annotations

import argparse
import re
import sys
import sysconfig
import venv
from collections import defaultdict
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASE = ["torch", "torchvision", "numpy", "pillow", "safetensors", "torchmetrics", "httpx",
        "tqdm", "pip"]
# the GPU machine's python3 is CPython 3.12 on Linux x86-64
MARKERS = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
           "implementation_name": "cpython", "platform_python_implementation": "CPython"}


def canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def carried() -> list[str]:
    """The distributions bench/gpu_requirements.txt names (pinned, one a line)."""
    names = []
    for line in (ROOT / "bench" / "gpu_requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(canon(re.split(r"[=<>!~ ;\[]", line, maxsplit=1)[0]))
    return names


def closure(roots: list[str]) -> set[str]:
    """``roots`` and everything they require here, extras included (markers as on the GPU
    machine)."""
    from packaging.requirements import Requirement

    done: dict[str, set[str]] = {}  # name -> extras already followed
    todo = [(canon(r), set()) for r in roots]
    while todo:
        name, extras = todo.pop()
        if name in done and extras <= done[name]:
            continue
        done[name] = done.get(name, set()) | extras
        for text in metadata.distribution(name).requires or []:
            req = Requirement(text)
            if req.marker is None or any(req.marker.evaluate(MARKERS | {"extra": e})
                                         for e in {""} | done[name]):
                todo.append((canon(req.name), set(req.extras)))
    return set(done)


def installed() -> dict[str, metadata.Distribution]:
    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    out = {}
    for dist in metadata.distributions():
        if Path(str(dist.locate_file(""))).resolve() == site:
            out.setdefault(canon(dist.metadata["Name"]), dist)
    return out


def build(dest: Path, names: set[str]) -> int:
    """Create the venv at ``dest`` and link the files of ``names`` into it; returns links."""
    dists = installed()
    unknown = names - set(dists)
    if unknown:
        raise SystemExit(f"gpu_venv: not installed here: {', '.join(sorted(unknown))}")
    venv.EnvBuilder(with_pip=False, symlinks=True, clear=True).create(dest)
    target = Path(sysconfig.get_paths(vars={"base": str(dest), "platbase": str(dest)})
                  ["purelib"])
    source = Path(sysconfig.get_paths()["purelib"])
    files: dict[str, list[Path]] = defaultdict(list)  # top-level entry -> files of ours
    owners: dict[str, set[str]] = defaultdict(set)  # top-level entry -> distributions
    for name, dist in dists.items():
        for f in dist.files or []:
            parts = Path(f).parts
            if not parts or parts[0] == ".." or "__pycache__" in parts:
                continue
            owners[parts[0]].add(name)
            if name in names:
                files[parts[0]].append(Path(f))
    links = 0
    for top, ours in sorted(files.items()):
        if not (source / top).exists():
            continue
        if owners[top] <= names:  # nothing left out lives there: one link
            (target / top).symlink_to(source / top)
            links += 1
            continue
        for f in ours:  # a folder shared with a left-out distribution: file by file
            if (source / f).exists() and not (target / f).exists():
                (target / f).parent.mkdir(parents=True, exist_ok=True)
                (target / f).symlink_to(source / f)
                links += 1
    return links


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_venv",
                                description=__doc__.splitlines()[0])
    p.add_argument("dest", type=Path)
    p.add_argument("--carried", action="store_true",
                   help="also link the distributions of bench/gpu_requirements.txt")
    p.add_argument("--exclude", default="", help="comma-separated distributions to leave out")
    args = p.parse_args(argv)
    names = closure(BASE)
    if args.carried:
        names |= set(carried())
    names -= {canon(n) for n in args.exclude.split(",") if n}
    links = build(args.dest, names)
    print(f"gpu_venv: {args.dest} ({sys.version.split()[0]}): {len(names)} distributions, "
          f"{links} links: {' '.join(sorted(names))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
