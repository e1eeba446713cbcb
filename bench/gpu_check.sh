#!/usr/bin/env bash
# The GPU check (issues 10 and 23): serving speed and training cost on ViT-B-16 with CUDA, on
# the lent GPU machine as it is (its own python3 and torch, no network), in under 8 minutes.
#
#   bash bench/gpu_check.sh                      # there: --device cuda, results in $OUT
#   bash bench/gpu_check.sh --device cpu --tiny --python PY --out DIR    # a CPU rehearsal
#
# Options: --device cuda|cpu (cuda); --tiny (clipfit-tiny, short windows: the rehearsal's
# settings); --out DIR (default $OUT, else results/gpu); --python PY (python3: the machine's,
# never this checkout's .venv); --wheels DIR (bench/gpu-wheels, from bench/gpu_wheels.sh);
# --site DIR (where they are installed, --target); --no-install (PY has them already);
# --budget S (seconds for the whole; 450 on cuda).
#
# 1. The torch / CUDA / device line, first (DIR/device.json); no CUDA device fails here.
# 2. pip install --no-index --no-deps --target SITE WHEELS/*.whl (never setup.sh: the
#    machine reaches no index), then PYTHONPATH=SITE:<this checkout>.
# 3. One import check (python -m bench.gpu_env imports) naming every missing module; the
#    check stops there unless the benchmarks can run. Without the service packages the
#    serving benchmark runs in-process only.
# 4. python -m bench.train_throughput: training images/s (DIR/train_throughput.json);
# 5. python -m bench.train_cost: ClipFit vs full fine-tuning, step time and peak memory
#    (DIR/train_cost.json);
# 6. bench/serve_speed.py in-process: the raw limit (a), one adapter (b), mixed adapters (c),
#    the swap path before batching (d), big requests (e, e0) (DIR/serve_inprocess/);
# 7. the same over HTTP, `clipfit serve --no-worker` (DIR/serve_http/);
# 8. python -m bench.gpu_env summary: the ratios (DIR/summary.json); the whole log is
#    DIR/gpu_check.log. Seven files in all: all of them come back from the device tool.
# Each step runs under its own `timeout`, cut to what is left of --budget; a failed step is
# reported and the next one runs. Exit 0 only when every step passed. Random weights.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEVICE=cuda TINY=0 INSTALL=1 BUDGET=
OUT_DIR=${OUT:-$ROOT/results/gpu}
PY=python3
WHEELS=$ROOT/bench/gpu-wheels
SITE=${TMPDIR:-/tmp}/clipfit-gpu-site
while [ $# -gt 0 ]; do
  case $1 in
    --device) DEVICE=$2; shift 2 ;;
    --tiny) TINY=1; shift ;;
    --out) OUT_DIR=$2; shift 2 ;;
    --python) PY=$2; shift 2 ;;
    --wheels) WHEELS=$2; shift 2 ;;
    --site) SITE=$2; shift 2 ;;
    --no-install) INSTALL=0; shift ;;
    --budget) BUDGET=$2; shift 2 ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    -*) echo "gpu_check: unknown option $1" >&2; exit 2 ;;
    *) OUT_DIR=$1; shift ;;  # the old positional OUT_DIR
  esac
done
if [ -z "$BUDGET" ]; then
  if [ "$DEVICE" = cpu ]; then BUDGET=1500; else BUDGET=450; fi
fi
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
LOG=$OUT_DIR/gpu_check.log
export PYTHONUNBUFFERED=1

if [ "$TINY" = 1 ]; then
  MODEL=clipfit-tiny
  THROUGHPUT=(--batch-size 8 --steps 4 --text-repeats 1)
  COST=(--batch-size 4 --steps 2)
  SERVE=(--max-batch 8 --clients 4 --big-clients 2 --big-batch 8 --warmup 0.2 --seconds 1
         --big-seconds 1)
else
  # ViT-B-16 at the recipe's batch (32) for training; serving at max batch 128 with 128
  # clients (128 adapters), big requests 8 x 128 images.
  MODEL=ViT-B-16
  THROUGHPUT=(--batch-size 32 --steps 30)
  COST=(--batch-size 32 --steps 10)
  SERVE=(--max-batch 128 --clients 128 --big-clients 8 --big-batch 128 --warmup 2
         --seconds 6 --big-seconds 6)
fi

START=$SECONDS

# step NAME CAP_SECONDS COMMAND...: run under `timeout`, capped by what is left of the budget;
# prints "== NAME: ok|FAILED|TIMED OUT|SKIPPED ..." (the summary and the exit status read
# these lines). Exit codes in $STEP_OK (default 0) count as ok; $STEP_RC holds the code.
step() {
  local name=$1 cap=$2 left t begin
  shift 2
  left=$((BUDGET - (SECONDS - START)))
  if [ "$left" -lt 15 ]; then
    echo "== $name: SKIPPED (budget of $BUDGET s spent)"
    STEP_RC=125
    return 125
  fi
  t=$((cap < left ? cap : left))
  local cmd="$*"
  [ ${#cmd} -le 300 ] || cmd="${cmd:0:300} ..."
  echo "== $name (timeout $t s, at $((SECONDS - START)) s): $cmd"
  begin=$SECONDS
  timeout --kill-after=10 "$t" "$@"
  STEP_RC=$?
  if [[ " ${STEP_OK:-0} " == *" $STEP_RC "* ]]; then
    echo "== $name: ok in $((SECONDS - begin)) s$([ "$STEP_RC" = 0 ] || echo " (exit $STEP_RC)")"
    return 0
  elif [ "$STEP_RC" -eq 124 ] || [ "$STEP_RC" -eq 137 ]; then
    echo "== $name: TIMED OUT after $((SECONDS - begin)) s"
  else
    echo "== $name: FAILED (exit $STEP_RC) after $((SECONDS - begin)) s"
  fi
  return "$STEP_RC"
}

main() {
  cd "$ROOT" || return 2
  # 1. the device line, first: torch alone, the machine's own
  step device 120 "$PY" "$ROOT/bench/gpu_env.py" device --device "$DEVICE" --out "$OUT_DIR" \
    || { echo "gpu_check: no usable torch / device: stopping"; return 3; }
  echo "gpu_check: --device $DEVICE, model $MODEL, budget $BUDGET s, results in $OUT_DIR"

  # 2. the carried wheels
  if [ "$INSTALL" = 1 ]; then
    if ! compgen -G "$WHEELS/*.whl" >/dev/null; then
      echo "gpu_check: no wheels in $WHEELS: run 'bash bench/gpu_wheels.sh' where PyPI is" \
        "reachable, and name bench/gpu-wheels in the device run's carry"
      return 3
    fi
    rm -rf "$SITE"
    step install 120 "$PY" -m pip install -q --no-index --no-deps --no-compile \
      --no-cache-dir --disable-pip-version-check --upgrade --target "$SITE" "$WHEELS"/*.whl \
      || { echo "gpu_check: the carried wheels did not install: stopping"; return 3; }
    export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  else
    export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  fi

  # 3. one import check, naming whatever is missing
  STEP_OK="0 4" step imports 120 "$PY" -m bench.gpu_env imports \
    || { echo "gpu_check: packages missing (above): stopping"; return 3; }
  local http=1
  [ "$STEP_RC" = 4 ] && http=0  # the service packages do not import: in-process only

  # 4-7. the benchmarks
  step train_throughput 120 "$PY" -m bench.train_throughput --model "$MODEL" \
    --device "$DEVICE" "${THROUGHPUT[@]}" --out "$OUT_DIR"
  step train_cost 150 "$PY" -m bench.train_cost --model "$MODEL" --device "$DEVICE" \
    "${COST[@]}" --out "$OUT_DIR"
  step serve_inprocess 200 "$PY" bench/serve_speed.py --model "$MODEL" --device "$DEVICE" \
    "${SERVE[@]}" --skip-http --out "$OUT_DIR/serve_inprocess"
  if [ "$http" = 1 ]; then
    step serve_http 240 "$PY" bench/serve_speed.py --model "$MODEL" --device "$DEVICE" \
      "${SERVE[@]}" --skip-inprocess --out "$OUT_DIR/serve_http"
  else
    echo "== serve_http: SKIPPED (the service packages do not import)"
  fi
  return 0
}

main 2>&1 | tee "$LOG"
rc=${PIPESTATUS[0]}
# the summary reads what the steps wrote; the step list comes from the log
steps=$(grep -E '^== [a-z_]+: (ok|FAILED|TIMED OUT|SKIPPED)' "$LOG" \
  | sed -E 's/^== ([a-z_]+): (.*)$/\1=\2/' | paste -sd ';' -)
PYTHONPATH="$ROOT" "$PY" "$ROOT/bench/gpu_env.py" summary "$OUT_DIR" --steps "$steps" 2>&1 \
  | tee -a "$LOG"
if [ "$rc" -ne 0 ] || grep -qE '^== [a-z_]+: (FAILED|TIMED OUT|SKIPPED \(budget)' "$LOG"; then
  echo "gpu_check: FAILED after $((SECONDS - START)) s (see above; log $LOG)" | tee -a "$LOG"
  exit 1
fi
echo "gpu_check: passed in $((SECONDS - START)) s; results in $OUT_DIR" | tee -a "$LOG"
