#!/usr/bin/env bash
# The CPU rehearsal of bench/gpu_check.sh (issue 23), here, before a GPU machine is lent:
#
#   bash bench/gpu_rehearsal.sh            # about 3-4 minutes on 2 cores; needs PyPI
#   bash bench/gpu_rehearsal.sh --keep     # keep the throwaway venv ($WORK/venv, ~5 GB)
#
# 1. bench/gpu_wheels.sh: the wheels that travel (bench/gpu-wheels, CPython 3.12, < 64 MiB);
# 2. a throwaway venv on CPython 3.12 (pyenv's, as the GPU machine's python3) holding only
#    torch 2.11.0 and torchvision 0.26.0 (the machine's versions), numpy, pillow,
#    safetensors, torchmetrics, httpx and tqdm, with what pip installs for them; it must not
#    import open_clip. Without a Python 3.12 here: this machine's 3.11, and the same list of
#    wheels downloaded for 3.11 (bench/gpu_wheels.sh --python-version 3.11);
# 3. bench/gpu_check.sh --device cpu --tiny with that venv's python, installing the wheels
#    as the GPU machine will (pip install --no-index --no-deps --target).
# Fails if any step fails. CI runs the same check without downloads, on .venv's own files
# (tests/bench/test_gpu_check.py).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
TORCH=${TORCH_VERSION:-2.11.0}            # the GPU machine's (KINDS.md)
TORCHVISION=${TORCHVISION_VERSION:-0.26.0}
BASE=("torch==$TORCH" "torchvision==$TORCHVISION" numpy pillow safetensors==0.8.0
      torchmetrics==1.9.0 httpx tqdm)
WORK=${WORK:-${TMPDIR:-/tmp}/clipfit-gpu-rehearsal}
OUT_DIR=$ROOT/results/gpu-rehearsal
PY=
KEEP=0
while [ $# -gt 0 ]; do
  case $1 in
    --keep) KEEP=1; shift ;;
    --out) OUT_DIR=$2; shift 2 ;;
    --python) PY=$2; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "gpu_rehearsal: unknown argument $1" >&2; exit 2 ;;
  esac
done
START=$SECONDS
phase() { echo; echo "=== gpu_rehearsal: $* (at $((SECONDS - START)) s)"; }
quiet_pip() { grep -v "is ignored: it is neither" >&2 || true; }

if [ -z "$PY" ]; then  # a CPython 3.12, as on the GPU machine; else 3.11
  for candidate in python3.12 "$(pyenv root 2>/dev/null)"/versions/3.12*/bin/python3.12 \
                   python3.11 python3; do
    if "$candidate" -c 'import sys; assert sys.version_info[:2] in ((3, 12), (3, 11))' \
        2>/dev/null; then
      PY=$candidate
      break
    fi
  done
fi
PYVER=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')

phase "1. the wheels that travel (CPython 3.12)"
bash bench/gpu_wheels.sh
rm -rf "$WORK"
mkdir -p "$WORK"
WHEELS=$ROOT/bench/gpu-wheels
if [ "$PYVER" != 3.12 ]; then
  echo "gpu_rehearsal: no Python 3.12 here: rehearsing on $PYVER with the same list for it"
  WHEELS=$WORK/wheels-$PYVER
  bash bench/gpu_wheels.sh --python-version "$PYVER" --dest "$WHEELS" | tail -1
fi

phase "2. a throwaway venv (Python $PYVER, $PY): ${BASE[*]}"
"$PY" -m venv "$WORK/venv"
PIP_CONSTRAINT= "$WORK/venv/bin/python" -m pip install -q --disable-pip-version-check \
  --only-binary=:all: "${BASE[@]}" 2> >(quiet_pip)
"$WORK/venv/bin/python" -m pip list --disable-pip-version-check 2>/dev/null \
  | awk 'NR > 2 { printf "%s %s, ", $1, $2 } END { print "" }'
if (cd "$WORK" && env -u PYTHONPATH "$WORK/venv/bin/python" -c "import open_clip" \
    2>/dev/null); then
  echo "gpu_rehearsal: the throwaway venv imports open_clip: it is not the base alone" >&2
  exit 1
fi

phase "3. bench/gpu_check.sh --device cpu --tiny on it, $WHEELS installed --target"
env -u PYTHONPATH -u VIRTUAL_ENV bash bench/gpu_check.sh --device cpu --tiny \
  --python "$WORK/venv/bin/python" --wheels "$WHEELS" --site "$WORK/site" --out "$OUT_DIR"
grep -q "^torch $TORCH" "$OUT_DIR/gpu_check.log" \
  || { echo "gpu_rehearsal: the check did not run on torch $TORCH" >&2; exit 1; }

[ "$KEEP" = 1 ] || rm -rf "$WORK"
echo
echo "gpu_rehearsal: passed in $((SECONDS - START)) s (Python $PYVER, torch $TORCH; results" \
  "in $OUT_DIR)"
