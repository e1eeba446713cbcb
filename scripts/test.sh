#!/usr/bin/env bash
# The test command: set up .venv, start PostgreSQL and Redis when they are not running,
# then run the whole suite (CPU only, no network needed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/services.sh
exec .venv/bin/python -m pytest -q "$@"
