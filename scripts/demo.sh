#!/usr/bin/env bash
# The main job, offline: set up, build the small pretrained CLIP clipfit-mini once if needed,
# export a few-shot image set from a domain it never saw (blurred Fashion-MNIST), measure
# zero-shot, train a ClipFit delta, measure it on held-out images, classify with it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/ensure_mini.sh
export PATH="$PWD/.venv/bin:$PATH"
DATA=${CLIPFIT_DEMO_DIR:-data/demo}
rm -rf "$DATA"
python bench/domains.py export blur "$DATA/train" --split train --per-class 16 >/dev/null
python bench/domains.py export blur "$DATA/test" --split test --per-class 50 >/dev/null

echo "== trainable tensors of ViT-B-16 (the paper's backbone)"
clipfit params ViT-B-16 | tail -n 1
echo "== zero-shot clipfit-mini on $DATA/test (blurred Fashion-MNIST, 10 classes)"
clipfit eval "$DATA/test" --model clipfit-mini --quiet | head -n 1
echo "== ClipFit training on $DATA/train (16 images per class)"
clipfit train "$DATA/train" --model clipfit-mini --out "$DATA/delta" --epochs 40 --lr 0.03 --crop-min 0.5
ls -l "$DATA/delta"
echo "== the ClipFit delta on $DATA/test"
clipfit eval "$DATA/test" --adapter "$DATA/delta" --quiet | head -n 1
echo "== classify two images with the delta"
clipfit classify "$DATA"/test/sneaker/$(ls "$DATA/test/sneaker" | head -n 1) \
  "$DATA"/test/trouser/$(ls "$DATA/test/trouser" | head -n 1) --adapter "$DATA/delta" --top-k 2
