#!/usr/bin/env bash
# The bench offline matrix on the GPU machine (builds nothing there): makes the random Qwen2.5
# models on that machine's /tmp (the 7B shape is 15 GB), runs `mpserve bench offline` per model
# (batch 1, 64, 256 x input 128, 512, 2048; prefill of 2048-token prompts is the input-2048
# rows), a kernel-profile pass, and prints a short table last. Full logs go to $OUT.
# Usage: tools/gpu/bench_offline.sh [PACK_DIR]   (default gpu-pack, from tools/gpu/pack.sh)
# Environment: MODELS (default "0.5b 1.5b 3b 7b"), BATCHES, INPUT_LENS, OUTPUT_LEN, REPEATS,
# PROFILE_MODELS (default "0.5b 7b"), PROFILE_BATCHES (default 1,256), PROFILE_INPUT_LENS (default
# 512), MODEL_ROOT (default /tmp/mpserve-models), KEEP_7B (default 0: the 7B model is deleted),
# FLAGS (extra `bench offline` flags for every row, e.g. "--async-scheduling"; default none).
set -uo pipefail
PACK=${1:-gpu-pack}
OUT=${OUT:-/tmp/bench-offline}
MODELS=${MODELS:-"0.5b 1.5b 3b 7b"}
BATCHES=${BATCHES:-1,64,256}
INPUT_LENS=${INPUT_LENS:-128,512,2048}
OUTPUT_LEN=${OUTPUT_LEN:-32}
REPEATS=${REPEATS:-2}
PROFILE_MODELS=${PROFILE_MODELS:-"0.5b 7b"}
PROFILE_BATCHES=${PROFILE_BATCHES:-1,256}
PROFILE_INPUT_LENS=${PROFILE_INPUT_LENS:-512}
MODEL_ROOT=${MODEL_ROOT:-/tmp/mpserve-models}
BIN="$PACK/mpserve"
mkdir -p "$OUT" "$MODEL_ROOT"
[[ -x "$BIN" ]] || { echo "no $BIN: run tools/gpu/pack.sh BUILD_DIR here first" >&2; exit 2; }

{
  echo "pack revision: $(cat "$PACK/REVISION" 2>/dev/null || echo unknown)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
  nvcc --version 2>/dev/null | tail -2
  command -v ncu nsys 2>/dev/null || true
} 2>&1 | tee "$OUT/env.txt"

for m in $MODELS; do
  dir="$MODEL_ROOT/qwen2.5-$m"
  if [[ ! -f "$dir/config.json" ]]; then
    "$BIN" make-model --shape "qwen2.5-$m" --out "$dir" --tokenizer-dir "$PACK/share/mpserve/tokenizer" \
      >>"$OUT/make_model.log" 2>&1 || { echo "make-model $m failed (see $OUT/make_model.log)"; continue; }
  fi
  # max_model_len covers the longest prompt plus output; 256 sequences in one decode batch.
  # note: chunked prefill lets early sequences decode (and finish) while later ones prefill; the
  # output length per batch size leaves OUTPUT_LEN decode steps of the whole batch after the
  # longest prefill (B * L / 2048 steps).
  : >"$OUT/bench_$m.log"
  for b in ${BATCHES//,/ }; do
    maxl=$(tr ',' '\n' <<<"$INPUT_LENS" | sort -n | tail -1)
    olen=$(( OUTPUT_LEN + b * maxl / 2048 ))
    "$BIN" bench offline --model "$dir" --device cuda --max-num-seqs 256 --max-num-batched-tokens 2048 \
      --max-model-len $(( maxl + olen + 16 )) --batch "$b" --input-len "$INPUT_LENS" --output-len "$olen" \
      --repeats "$REPEATS" --warmup 1 ${FLAGS:-} >>"$OUT/bench_$m.log" 2>&1 ||
      echo "bench $m b=$b failed (see $OUT/bench_$m.log)"
  done
  if [[ " $PROFILE_MODELS " == *" $m "* ]]; then
    "$BIN" bench offline --model "$dir" --device cuda --max-num-seqs 256 --max-num-batched-tokens 2048 \
      --max-model-len 2112 --batch "$PROFILE_BATCHES" --input-len "$PROFILE_INPUT_LENS" --output-len 16 --repeats 1 \
      --warmup 1 --profile \
      >"$OUT/profile_$m.log" 2>&1 || echo "profile $m failed (see $OUT/profile_$m.log)"
  fi
done
[[ " $MODELS " == *" 7b "* && ${KEEP_7B:-0} == 0 ]] && rm -rf "$MODEL_ROOT/qwen2.5-7b"  # 15 GB of /tmp

# Short table: one row per configuration from the summary lines.
echo
printf '%-6s %5s %5s | %10s %8s | %10s %8s %7s %6s %6s\n' model batch in prefill_t/s pf_peak decode_t/s step_ms host% roof comp
for m in $MODELS; do
  grep '^bench_offline:' "$OUT/bench_$m.log" 2>/dev/null | while read -r line; do
    get() { sed -nE "s/.* $1=([^ ]+).*/\1/p" <<<"$line"; }
    hf=$(get host_frac); [[ $hf != n/a ]] && hf=$(awk -v x="$hf" 'BEGIN{printf "%.1f", 100*x}')
    printf '%-6s %5s %5s | %10s %8s | %10s %8s %7s %6s %6s\n' "$m" "$(get batch)" "$(get input_len)" \
      "$(get prefill_tok_s)" "$(get prefill_peak_frac)" "$(get decode_tok_s)" "$(get decode_step_ms)" "$hf" \
      "$(get decode_roofline_frac)" "$(get decode_compute_frac)"
  done
done
grep -h '^ceilings:' "$OUT"/bench_*.log 2>/dev/null | head -1
