#!/usr/bin/env bash
# Make sure the offline base model clipfit-mini exists in the weights directory: install
# Fashion-MNIST (Debian package) when missing, then pretrain (about 9 minutes on 2 CPU cores,
# once; later runs find the checkpoint). Expects .venv (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
WEIGHTS=${CLIPFIT_WEIGHTS_DIR:-$HOME/.cache/clipfit/weights}
FMNIST=/usr/share/datasets/fashion-mnist
if [ -f "$WEIGHTS/clipfit-mini/open_clip_model.safetensors" ]; then
  exit 0
fi
if [ ! -f "$FMNIST/train-images-idx3-ubyte.gz" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing Fashion-MNIST (apt-get install dataset-fashion-mnist)" >&2
    apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null; }
  else
    echo "Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist'" >&2
    exit 1
  fi
fi
echo "building clipfit-mini once (about 9 minutes on 2 CPU cores) into $WEIGHTS" >&2
.venv/bin/clipfit pretrain-mini --cache-dir "$WEIGHTS"
