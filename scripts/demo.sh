#!/usr/bin/env bash
# The main job, offline: set up, build the small pretrained CLIP clipfit-mini once if needed,
# start the embedded service (`clipfit serve`: SQLite file + in-process Celery worker), and run
# a client session against it over HTTP: submit a few-shot job from a domain the model never
# saw (blurred Fashion-MNIST, 16 images per class), follow its progress, then classify
# held-out images with the adapter and zero-shot, and print both accuracies. Run from a
# terminal, the service then stays up for the web page it prints the address of (Ctrl-C ends
# it; CLIPFIT_DEMO_EXIT=1 ends the demo at once).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/ensure_mini.sh
export PATH="$PWD/.venv/bin:$PATH"
DATA=${CLIPFIT_DEMO_DIR:-data/demo}
PORT=${CLIPFIT_DEMO_PORT:-8765}
rm -rf "$DATA"
mkdir -p "$DATA"
python -m bench.domains export blur "$DATA/train" --split train --per-class 16 >/dev/null
python -m bench.domains export blur "$DATA/test" --split test --per-class 50 >/dev/null

# a key for the demo's client (the service would otherwise print a first admin key)
CLIPFIT_API_KEY=$(clipfit keys --data-dir "$DATA/service" create --tenant demo \
  --scope train,classify,read --name demo)
export CLIPFIT_API_KEY
echo "== clipfit serve on http://127.0.0.1:$PORT (data in $DATA/service, log $DATA/serve.log)"
CLIPFIT_BASE_MODELS=${CLIPFIT_BASE_MODELS:-clipfit-mini,clipfit-tiny} \
  clipfit serve --data-dir "$DATA/service" --port "$PORT" >"$DATA/serve.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
python scripts/demo_client.py --url "http://127.0.0.1:$PORT" --train "$DATA/train" \
  --test "$DATA/test" --model clipfit-mini --recipe demo \
  || { echo "-- service log:" >&2; tail -n 30 "$DATA/serve.log" >&2; exit 1; }
echo "== the web page: http://127.0.0.1:$PORT/  (sign in with the demo's key: $CLIPFIT_API_KEY)"
if [ -t 0 ] && [ -z "${CLIPFIT_DEMO_EXIT:-}" ]; then
  echo "== the service keeps running for the page (the demo's job and adapter are there);"
  echo "   press Ctrl-C to stop it"
  wait $SERVER || true
else
  echo "== done; run the service yourself with: .venv/bin/clipfit serve --data-dir $DATA/service" \
    "--port $PORT  (the page at /, API docs at /docs)"
fi
