#!/usr/bin/env bash
# Does the host time of a decode step depend on which CPUs the engine runs on? Prints the machine's
# NUMA layout and the GPU's local CPUs, then runs one `bench offline` row RUNS times unpinned and
# RUNS times pinned (taskset) to the GPU's local CPUs and to the other CPUs, alternating, and
# prints host_us_p50 and the step time of each run. Builds nothing.
# Usage: OUT=dir tools/gpu/host_affinity.sh [PACK_DIR]   (default gpu-pack)
# Environment: MODEL (default /tmp/mpserve-models/qwen2.5-0.5b, made if missing), BATCH (256),
# INPUT (512), OUTPUT (128), RUNS (3).
set -uo pipefail
PACK=${1:-gpu-pack}
OUT=${OUT:-/tmp/host-affinity}
MODEL=${MODEL:-/tmp/mpserve-models/qwen2.5-0.5b}
BATCH=${BATCH:-256} INPUT=${INPUT:-512} OUTPUT=${OUTPUT:-128} RUNS=${RUNS:-3}
mkdir -p "$OUT"
lscpu | grep -iE 'model name|^cpu\(s\)|numa|thread\(s\) per core|socket' | tee "$OUT/cpu.txt"
bus=$(nvidia-smi --query-gpu=pci.bus_id --format=csv,noheader | head -1 | tr 'A-Z' 'a-z' | sed -E 's/^0000([0-9a-f]{4}:)/\1/')
local_cpus=$(cat "/sys/bus/pci/devices/$bus/local_cpulist" 2>/dev/null || echo "")
echo "gpu $bus local_cpulist=${local_cpus:-unknown}" | tee -a "$OUT/cpu.txt"
nvidia-smi topo -m 2>/dev/null | tee -a "$OUT/cpu.txt"
all=$(taskset -pc $$ | sed -E 's/.*: //')
other=$(python3 - "$local_cpus" "$all" <<'PY'
import sys
def parse(s):
    out=set()
    for part in s.split(','):
        if not part: continue
        a,_,b=part.partition('-'); out.update(range(int(a), int(b or a)+1))
    return out
loc, al = parse(sys.argv[1]), parse(sys.argv[2])
print(','.join(map(str, sorted(al - loc))))
PY
)
echo "all=$all other=${other:-none}" | tee -a "$OUT/cpu.txt"
if [[ ! -f "$MODEL/config.json" ]]; then
  "$PACK/mpserve" make-model --shape "$(basename "$MODEL")" --out "$MODEL" \
    --tokenizer-dir "$PACK/share/mpserve/tokenizer" >"$OUT/make_model.log" 2>&1
fi
run() {
  local tag=$1; shift
  "$@" "$PACK/mpserve" bench offline --model "$MODEL" --device cuda --max-num-seqs 256 --max-num-batched-tokens 2048 \
    --max-model-len $((INPUT + OUTPUT + 16)) --batch "$BATCH" --input-len "$INPUT" --output-len "$OUTPUT" --repeats 2 \
    --warmup 1 --async-scheduling >"$OUT/run.log" 2>&1
  local line; line=$(grep '^bench_offline:' "$OUT/run.log")
  printf '%-8s %s\n' "$tag" "$(grep -oE '(decode_step_ms|host_us_p50|host_backend_us|host_frac)=[^ ]+' <<<"$line" | tr '\n' ' ')" |
    tee -a "$OUT/runs.txt"
  cat "$OUT/run.log" >>"$OUT/runs_full.log"
}
for i in $(seq "$RUNS"); do
  run free
  [[ -n $local_cpus ]] && run local taskset -c "$local_cpus"
  [[ -n $other ]] && run other taskset -c "$other"
done
