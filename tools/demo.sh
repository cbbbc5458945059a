#!/usr/bin/env bash
# `make demo`: the product tour on the embedded default model (no download; works without a GPU).
#  1. `mpserve serve` with 2 engines behind the router (CUDA + MPS when a GPU is present, CPU otherwise)
#  2. `mpserve bench serve` drives it for about 20 seconds and prints the summary
#  3. `mpserve advise` gives its verdict for this machine (from the study's results for this GPU type,
#     else a short live A/B of 1 vs 2 engines)
#  4. everything is shut down: serve drains, stops its engines and its MPS daemon.
set -euo pipefail
build=${1:-build}
bin="$PWD/$build/mpserve"
export MPSERVE_TOKENIZER_DIR=${MPSERVE_TOKENIZER_DIR:-$PWD/$build/share/mpserve/tokenizer}
duration=${DEMO_SECONDS:-20}

device=cpu
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  device=cuda
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/mpserve-demo.XXXXXX")
serve_pid=""
cleanup() {
  if [[ -n "$serve_pid" ]] && kill -0 "$serve_pid" 2>/dev/null; then
    kill -TERM "$serve_pid" 2>/dev/null || true
    wait "$serve_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

section() { printf '\n=== %s\n' "$*"; }

section "1/4 make the embedded default model (tiny: Qwen2 architecture, real Qwen vocabulary, random weights)"
"$bin" tokenize <<<"co-location" >/dev/null   # loads (and on first use creates) the default model's tokenizer
echo "ok"

section "2/4 mpserve serve: 2 engines, device=$device (MPS: auto = on when a GPU and nvidia-cuda-mps-control are present)"
"$bin" serve --engines 2 --device "$device" --port 0 --runtime-dir "$work/run" >"$work/serve.log" 2>&1 &
serve_pid=$!
port=""
for _ in $(seq 1 600); do
  port=$(sed -n 's|^mpserve serve: listening on http://[^:]*:\([0-9]*\)$|\1|p' "$work/serve.log" | head -1)
  [[ -n "$port" ]] && break
  if ! kill -0 "$serve_pid" 2>/dev/null; then
    echo "demo: mpserve serve exited early; its log:" >&2
    cat "$work/serve.log" >&2
    exit 1
  fi
  sleep 0.2
done
if [[ -z "$port" ]]; then
  echo "demo: mpserve serve did not start listening within 120 s; its log:" >&2
  cat "$work/serve.log" >&2
  exit 1
fi
grep -E 'serve:|engine [0-9]+' "$work/serve.log" | head -8 || true
echo "router: http://127.0.0.1:$port (OpenAI-compatible: /v1/completions, /v1/chat/completions, /v1/models)"

section "3/4 mpserve bench serve: closed loop, 8 clients, 64-token prompts, 32 tokens out, ${duration} s"
"$bin" bench serve --base-url "http://127.0.0.1:$port" --concurrency 8 --input-len 64 --output-len 32 \
  --warmup 2 --duration "$duration" --json "$work/bench.json"

section "4/4 mpserve advise: co-locate this model on this machine?"
kill -TERM "$serve_pid"
wait "$serve_pid" || { echo "demo: serve did not stop cleanly; its log:" >&2; tail -20 "$work/serve.log" >&2; exit 1; }
serve_pid=""
grep -E 'serve: stopped' "$work/serve.log" || true
"$bin" advise --context 64 --workload decode --device "$device" --probe-if-needed --probe-warmup 2 --probe-window 4

echo
echo "demo: done — serve stopped, no engine or MPS daemon left."
