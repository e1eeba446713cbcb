#!/usr/bin/env bash
# Create .venv (Python 3.11) and install clipfit with its dev tools. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip >.venv/install.log 2>&1 \
  || { cat .venv/install.log >&2; exit 1; }
# torch==2.14.1 / torchvision==0.29.1 are pinned in pyproject.toml.
.venv/bin/python -m pip install --quiet -e '.[dev]' >>.venv/install.log 2>&1 \
  || { cat .venv/install.log >&2; echo "pip install failed (log: .venv/install.log)" >&2; exit 1; }
