#!/usr/bin/env bash
# On the GPU machine: make the test models with mpserve and record HF transformers golden logits.
# usage (device run): bash tools/gpu/golden.sh   (needs gpu-pack/ from tools/gpu/pack.sh; writes $OUT)
set -euo pipefail
OUT=${OUT:-/tmp/golden-out}
mkdir -p "$OUT"
export MPSERVE_TOKENIZER_DIR=$PWD/gpu-pack/share/mpserve/tokenizer
work=/tmp/mpserve-golden && mkdir -p $work
for spec in ${GOLDEN_SPECS:-tiny:tiny:0 qwen2.5-0.5b:qwen2.5-0.5b:0}; do
  IFS=: read -r name shape seed <<<"$spec"
  ./gpu-pack/mpserve make-model --shape "$shape" --seed "$seed" --out "$work/$name" 2>&1 | tee -a "$OUT/golden.log"
  python3 tools/gpu/golden_hf.py --model "$work/$name" --name "$name" --out "$OUT/golden_${name//./_}.json" 2>&1 \
    | grep -v Warning | tee -a "$OUT/golden.log"
done
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a "$OUT/golden.log"
