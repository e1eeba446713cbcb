"""``pip install clipfit`` alone: a fresh virtual environment gets the client and ``clipfit
remote`` without torch or any other server dependency, and its ``clipfit`` works against a
live ``clipfit serve``. The server's commands there name the extra to install."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from setuptools import find_packages

from clipfit.client import Client
from clipfit_core.version import __version__

ROOT = Path(__file__).resolve().parents[2]
SERVER_ONLY = ("torch", "torchvision", "open_clip", "numpy", "PIL", "sqlalchemy", "alembic",
               "pydantic", "pydantic_settings", "fastapi", "uvicorn", "celery")
OFFLINE_SIGNS = ("NewConnectionError", "Temporary failure in name resolution",
                 "Network is unreachable", "No matching distribution found for httpx")


def clean_env() -> dict[str, str]:
    """This environment without the checkout on the path or a service configuration."""
    return {k: v for k, v in os.environ.items()
            if k != "PYTHONPATH" and not k.startswith("CLIPFIT_")}


@pytest.fixture(scope="module")
def client_bin(tmp_path_factory) -> Path:
    """``bin/`` of a new virtual environment with the checkout installed without extras: its
    wheel is built (with this environment's setuptools, no network) from a copy of what the
    install packs; httpx and tqdm come from the package index."""
    root = tmp_path_factory.mktemp("client-install")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    find = project["tool"]["setuptools"]["packages"]["find"]
    packages = {p.split(".")[0] for p in find_packages(
        str(ROOT), include=find.get("include", ("*",)), exclude=find.get("exclude", ()))}
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", project["project"]["readme"]):
        shutil.copy(ROOT / name, src / name)
    for package in packages:
        shutil.copytree(ROOT / package, src / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(root / "dist"), str(src)],
                   check=True, cwd=root, env=clean_env(), capture_output=True)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    wheel = next((root / "dist").glob("clipfit-*.whl"))
    install = subprocess.run([*pip, "--python", str(venv / "bin" / "python"), "install",
                              "--quiet", str(wheel)],
                             check=False, cwd=root, env=clean_env(), capture_output=True,
                             text=True)
    if install.returncode and any(sign in install.stderr for sign in OFFLINE_SIGNS):
        pytest.skip("the package index is unreachable: httpx cannot be installed")
    assert install.returncode == 0, install.stderr
    return venv / "bin"


def run(client_bin: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(client_bin / args[0]), *args[1:]], check=False,
                          cwd=client_bin.parent, env=clean_env(), capture_output=True,
                          text=True, timeout=60)


def test_the_client_installs_without_the_server_stack(client_bin):
    probe = ("import importlib.metadata as m, importlib.util as u, json; print(json.dumps("
             f"[[n for n in {list(SERVER_ONLY)!r} if u.find_spec(n)], m.version('clipfit'), "
             "m.requires('clipfit')]))")
    found, version, requires = json.loads(run(client_bin, "python", "-c", probe).stdout)
    assert found == [] and version == __version__
    unconditional = sorted(r for r in requires if "extra ==" not in r)
    assert [r.split(">")[0] for r in unconditional] == ["httpx", "tqdm"]
    assert any("torch==2.14.1" in r and 'extra == "server"' in r for r in requires)

    out = run(client_bin, "clipfit", "--version")
    assert out.returncode == 0 and out.stdout.strip() == f"clipfit {__version__}"
    out = run(client_bin, "clipfit", "--help")
    assert out.returncode == 0 and "remote" in out.stdout and "serve" in out.stdout
    for command in (["train", "data", "--out", "delta", "--model", "clipfit-tiny"],
                    ["serve"], ["keys", "list"], ["pretrain-mini", "--help"]):
        out = run(client_bin, "clipfit", *command)
        [line] = out.stderr.splitlines()  # one line, no traceback
        assert out.returncode == 2 and line.startswith(
            f"clipfit: error: 'clipfit {command[0]}' needs the server's dependencies (no module "
            "named ") and line.endswith("install them with: pip install 'clipfit[server]'"), line


def test_clipfit_remote_from_the_client_install(client_bin, url, key, colour_train):
    remote = ("clipfit", "remote", "--url", url, "--api-key", key)
    out = run(client_bin, *remote, "--json", "datasets", "create", str(colour_train))
    assert out.returncode == 0, out.stderr
    dataset = json.loads(out.stdout)
    assert dataset["images"] == 64 and dataset["classnames"] == ["blue", "green", "red", "yellow"]

    out = run(client_bin, *remote, "--json", "jobs", "ls")
    assert out.returncode == 0, out.stderr
    with Client(url, key) as cf:
        assert [j["id"] for j in json.loads(out.stdout)] == [j.id for j in cf.jobs.list()]
        assert dataset["id"] in [d["id"] for d in cf.datasets.list()]
    out = run(client_bin, *remote, "--json", "datasets", "show", dataset["id"])
    assert out.returncode == 0 and json.loads(out.stdout)["counts"]["red"] == 16

    version = ("from clipfit.client import Client; import sys; "
               "print(Client(sys.argv[1], sys.argv[2]).version())")
    out = run(client_bin, "python", "-c", version, url, key)
    assert out.stdout.strip() == str({"version": __version__, "api": "v1"}), out.stderr

    out = run(client_bin, "clipfit", "remote", "--url", url, "--api-key", "cfk_wrong", "jobs",
              "ls")
    assert out.returncode == 1 and "the service refused: 401" in out.stderr
