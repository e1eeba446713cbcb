#!/usr/bin/env bash
# The test command: set up .venv, then run the whole suite (CPU only, no network needed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
