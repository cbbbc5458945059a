#!/usr/bin/env bash
# `make demo`: the main job on the embedded default model (no download, no GPU needed).
set -euo pipefail
build=${1:-build}
bin="$build/mpserve"
export MPSERVE_TOKENIZER_DIR=${MPSERVE_TOKENIZER_DIR:-$PWD/$build/share/mpserve/tokenizer}
device=cpu
if "$bin" generate --help >/dev/null 2>&1 && command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  device=cuda
fi
echo "demo: mpserve generate on the embedded default model (tiny, random weights), device=$device"
"$bin" generate --device "$device" --max-tokens 48 \
  --prompt "The quick brown fox" \
  --prompt "Small models leave most of a GPU idle because" \
  --prompt "def fibonacci(n):"
