#!/usr/bin/env bash
# The fault suite's compose mode on the offline stand-in stack: builds the project's image
# from this checkout's last commit with ../shared/tools/compose-offline (its README: stand-in
# base images, host networking on private ports, API on 127.0.0.1:18790), brings the stack
# up, runs `python -m bench.faults --compose` against it, then takes it down again.
#
#   sudo bash bench/compose_check.sh                 # every scenario (~15 min + the build)
#   sudo bash bench/compose_check.sh --only redis-wiped --trials 2
#   KEEP_UP=1 sudo bash bench/compose_check.sh ...   # leave the stack running afterwards
#
# COMPOSE_OFFLINE: where that tool lives (default: ../shared/tools/compose-offline beside the
# repository). Arguments go to bench.faults. Run as root (the tool starts dockerd).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TOOL=$(cd "${COMPOSE_OFFLINE:-$ROOT/../shared/tools/compose-offline}" && pwd)
W=${TMPDIR:-/tmp}/clipfit-compose-real
PY=${PYTHON:-$ROOT/.venv/bin/python}
export DOCKER_CONFIG=$W/dockercfg DOCKER_BUILDKIT=0

bash "$TOOL/run.sh" "$ROOT" engine images up
[ -n "${KEEP_UP:-}" ] || trap 'bash "$TOOL/run.sh" "$ROOT" down' EXIT
cd "$ROOT"
"$PY" -m bench.faults --compose --api http://127.0.0.1:18790 --compose-dir "$W/src" \
    --compose-file docker-compose.yml --compose-file docker-compose.cpu.yml \
    --compose-file "$TOOL/compose.hostnet.yml" "$@"
