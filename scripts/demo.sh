#!/usr/bin/env bash
# The main job, offline: set up, make a small image set, measure zero-shot, train a ClipFit
# delta, measure it on held-out images, and classify a few images with it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
DATA=${CLIPFIT_DEMO_DIR:-data/demo}
MODEL=${CLIPFIT_DEMO_MODEL:-clipfit-tiny}
rm -rf "$DATA"
python -m clipfit_core.synthetic "$DATA/train" --per-class 16 --seed 0 >/dev/null
python -m clipfit_core.synthetic "$DATA/test" --per-class 30 --seed 1 >/dev/null

echo "== trainable tensors of ViT-B-16 (the paper's backbone)"
clipfit params ViT-B-16 | tail -n 1
echo "== zero-shot $MODEL on $DATA/test"
clipfit eval "$DATA/test" --model "$MODEL" --quiet | head -n 1
echo "== ClipFit training on $DATA/train"
clipfit train "$DATA/train" --model "$MODEL" --out "$DATA/delta" --epochs 40 --lr 0.1 \
  --batch-size 16 --val-fraction 0.25
ls -l "$DATA/delta"
echo "== ClipFit delta on $DATA/test"
clipfit eval "$DATA/test" --adapter "$DATA/delta" --quiet
echo "== classify two images with the delta"
clipfit classify "$DATA/test/red/0000.png" "$DATA/test/blue/0000.png" --adapter "$DATA/delta" --top-k 2
