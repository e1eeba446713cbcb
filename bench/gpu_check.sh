#!/usr/bin/env bash
# The prepared GPU check (issue 10): serving speed and training cost on ViT-B-16 with CUDA,
# in under 8 minutes, results in one folder.
#
#   bench/gpu_check.sh OUT_DIR        # OUT_DIR defaults to $OUT, else gpu_check_results
#
# 1. bench/serve_speed.py --device cuda --max-batch 128 --clients 128: the limit (raw
#    encode_image at batch 128, bf16 autocast), one adapter vs 128 mixed adapters, the path
#    before batching, big requests; through HTTP and in-process (serve_speed.json);
# 2. python -m bench.train_throughput on CUDA (training images/s, amp);
# 3. python -m bench.train_cost on CUDA (ClipFit vs full fine-tuning: step time, peak memory).
# Random weights throughout: nothing is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-gpu_check_results}}
mkdir -p "$OUT_DIR"
[ -x .venv/bin/python ] || ./scripts/setup.sh
PY=.venv/bin/python
export PYTHONUNBUFFERED=1
set -o pipefail
$PY - <<'PY' 2>&1 | tee "$OUT_DIR/device.txt"
import torch
assert torch.cuda.is_available(), "no CUDA device visible to torch"
print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))
PY
timeout 330 $PY bench/serve_speed.py --model ViT-B-16 --device cuda --max-batch 128 \
  --clients 128 --big-clients 8 --big-batch 128 --warmup 2 --seconds 8 --big-seconds 8 --out "$OUT_DIR" \
  2>&1 | tee "$OUT_DIR/serve_speed.log"
timeout 60 $PY -m bench.train_throughput --model ViT-B-16 --device cuda --steps 20 \
  --batch-size 32 2>&1 | tee "$OUT_DIR/train_throughput.log"
timeout 60 $PY -m bench.train_cost --model ViT-B-16 --device cuda --batch-size 32 --steps 10 \
  --out "$OUT_DIR" 2>&1 | tee "$OUT_DIR/train_cost.log"
echo "gpu_check: results in $OUT_DIR"
