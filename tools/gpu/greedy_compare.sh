#!/usr/bin/env bash
# Greedy tokens of `mpserve generate` on the CPU and CUDA backends, side by side (the issue-3
# check "identical for 64 tokens on tiny"): prints per prompt how many leading tokens agree.
# The tiny-model logit margins behind a difference come from test_cuda's TinyGreedyTest.
# Usage: OUT=dir tools/gpu/greedy_compare.sh [PACK_DIR] [MODEL_DIR]   (default: the embedded tiny)
set -uo pipefail
PACK=${1:-gpu-pack}
MODEL=${2:-}
OUT=${OUT:-/tmp/greedy-compare}
TOKENS=${TOKENS:-64}
mkdir -p "$OUT"
export MPSERVE_TOKENIZER_DIR=$PWD/$PACK/share/mpserve/tokenizer
args=(generate --json --ignore-eos --max-tokens "$TOKENS" --max-model-len 512 --max-num-seqs 8
      --prompt "The quick brown fox" --prompt "Once upon a time" --prompt "def fibonacci(n):"
      --prompt "The capital of France is")
[[ -n "$MODEL" ]] && args+=(--model "$MODEL")
for dev in cpu cuda; do
  extra=()
  [[ $dev == cuda ]] && extra=(--gpu-memory-fraction 0.2)
  "$PACK/mpserve" "${args[@]}" --device $dev "${extra[@]}" >"$OUT/generate_$dev.jsonl" 2>"$OUT/generate_$dev.err" ||
    { echo "generate --device $dev failed (see $OUT/generate_$dev.err)"; exit 1; }
done
python3 - "$OUT/generate_cpu.jsonl" "$OUT/generate_cuda.jsonl" <<'PY'
import json, sys
def load(p): return [json.loads(l) for l in open(p) if l.startswith("{")]
cpu, gpu = load(sys.argv[1]), load(sys.argv[2])
for c, g in zip(cpu, gpu):
    a, b = c["token_ids"], g["token_ids"]
    n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    print(f"greedy_compare prompt={c['prompt']!r}: {n}/{len(a)} leading tokens identical"
          + ("" if n == len(a) else f"; at {n}: cpu {a[n:n+4]} cuda {b[n:n+4]}"))
PY
