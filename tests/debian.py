"""Debian packages some tests drive (a real browser, a real load balancer), installed with
apt-get when missing: CI machines start without them, and the tests must not skip."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest


def debian_binary(name: str, package: str) -> str:
    """The path of ``name`` (on PATH or in /usr/sbin), installing ``package`` when missing."""

    def find() -> str | None:
        found = shutil.which(name) or Path("/usr/sbin", name)
        return str(found) if Path(found).exists() else None

    path = find()
    if path is None and shutil.which("apt-get") is not None:
        install = ["apt-get", "install", "-y", "-q", package]
        env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
        if subprocess.run(install, env=env, capture_output=True, check=False).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=False)
            subprocess.run(install, env=env, capture_output=True, check=False)
        path = find()
    if path is None:
        pytest.fail(f"this test needs Debian's {package}: apt-get install -y {package}")
    return path
