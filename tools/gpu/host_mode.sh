#!/usr/bin/env bash
# Is the bimodal host time of a decode step (a whole process fast, or about twice as slow) the
# machine's memory, its CPU placement, or our code? Prints the machine's THP and glibc settings, NUMA
# layout and the GPU's local CPUs, runs the per-process latency probe `mem_latency` PROBES times
# (each run a new process), then runs one `bench offline` row RUNS times per variant, alternating,
# and prints each run's host time with the process's AnonHugePages and context switches sampled
# mid-run. Builds nothing.
# Usage: OUT=dir tools/gpu/host_mode.sh [PACK_DIR]   (default gpu-pack; needs PACK/mem_latency, made
#   by `g++ -O2 -static -s -o PACK/mem_latency tools/gpu/mem_latency.cpp`)
# Environment: MODEL (default /tmp/mpserve-models/qwen2.5-0.5b, made if missing), BATCH (256),
# INPUT (512), OUTPUT (128), RUNS (4), PROBES (8), SAMPLE_AFTER (seconds, 4), VARIANTS
# (';'-separated, default "plain;hugetlb": plain = PACK/mpserve, hugetlb = the same with
# GLIBC_TUNABLES=glibc.malloc.hugetlb=1, bin:NAME = PACK/NAME, cpus:local / cpus:other / cpus:LIST =
# PACK/mpserve pinned with taskset to the GPU's local CPUs, to the others, or to LIST; a variant
# whose CPU set is empty is skipped).
set -uo pipefail
PACK=${1:-gpu-pack}
OUT=${OUT:-/tmp/host-mode}
MODEL=${MODEL:-/tmp/mpserve-models/qwen2.5-0.5b}
BATCH=${BATCH:-256} INPUT=${INPUT:-512} OUTPUT=${OUTPUT:-128} RUNS=${RUNS:-4} PROBES=${PROBES:-8}
SAMPLE_AFTER=${SAMPLE_AFTER:-4} VARIANTS=${VARIANTS:-plain;hugetlb}
mkdir -p "$OUT"
{
  echo "revision $(cat "$PACK/REVISION" 2>/dev/null || echo unknown)"
  uname -r
  ldd --version 2>&1 | head -1
  for f in enabled defrag khugepaged/defrag; do
    echo "thp $f: $(cat /sys/kernel/mm/transparent_hugepage/$f 2>/dev/null)"
  done
  grep -m1 -o 'hypervisor' /proc/cpuinfo || echo "no hypervisor flag"
  lscpu | grep -iE 'model name|^cpu\(s\)|numa node|hypervisor'
  grep -E 'MemTotal|HugePages_Total|Hugepagesize' /proc/meminfo
  lscpu | grep -iE 'numa|thread\(s\) per core|socket'
  nvidia-smi topo -m 2>/dev/null
} | tee "$OUT/machine.txt"
bus=$(nvidia-smi --query-gpu=pci.bus_id --format=csv,noheader | head -1 | tr 'A-Z' 'a-z' | sed -E 's/^0000([0-9a-f]{4}:)/\1/')
local_cpus=$(cat "/sys/bus/pci/devices/$bus/local_cpulist" 2>/dev/null || echo "")
all_cpus=$(taskset -pc $$ | sed -E 's/.*: //')
other_cpus=$(python3 - "$local_cpus" "$all_cpus" <<'PY'
import sys
def parse(s):
    out = set()
    for part in s.split(','):
        if not part: continue
        a, _, b = part.partition('-'); out.update(range(int(a), int(b or a) + 1))
    return out
loc, al = parse(sys.argv[1]), parse(sys.argv[2])
print(','.join(map(str, sorted(al - loc))))
PY
)
echo "gpu $bus local_cpulist=${local_cpus:-unknown} all=$all_cpus other=${other_cpus:-none}" | tee -a "$OUT/machine.txt"
for i in $(seq "$PROBES"); do "$PACK/mem_latency"; done | tee "$OUT/probes.txt"
if [[ ! -f "$MODEL/config.json" ]]; then
  "$PACK/mpserve" make-model --shape "$(basename "$MODEL")" --out "$MODEL" \
    --tokenizer-dir "$PACK/share/mpserve/tokenizer" >"$OUT/make_model.log" 2>&1
fi
run() {
  local tag=$1 bin=$PACK/mpserve cpus=""
  local -a env=() pin=()
  case $tag in
    plain) ;;
    hugetlb) env=(GLIBC_TUNABLES=glibc.malloc.hugetlb=1) ;;
    bin:*) bin=$PACK/${tag#bin:} ;;
    cpus:local) cpus=$local_cpus ;;
    cpus:other) cpus=$other_cpus ;;
    cpus:*) cpus=${tag#cpus:} ;;
    *) echo "host_mode: unknown variant $tag" >&2; return 1 ;;
  esac
  if [[ $tag == cpus:* ]]; then
    [[ -n $cpus ]] || { echo "host_mode: $tag: no such CPUs here, skipped" | tee -a "$OUT/runs.txt"; return 0; }
    pin=(taskset -c "$cpus")
  fi
  env "${env[@]}" "${pin[@]}" "$bin" bench offline --model "$MODEL" --device cuda --max-num-seqs 256 \
    --max-num-batched-tokens 2048 --max-model-len $((INPUT + OUTPUT + 16)) --batch "$BATCH" \
    --input-len "$INPUT" --output-len "$OUTPUT" --repeats 2 --warmup 1 --async-scheduling >"$OUT/run.log" 2>&1 &
  local pid=$! sample=""
  sleep "$SAMPLE_AFTER"
  if kill -0 "$pid" 2>/dev/null; then
    sample="thp_kb=$(awk '/AnonHugePages/ {print $2}' /proc/$pid/smaps_rollup 2>/dev/null)"
    sample+=" rss_kb=$(awk '/VmRSS/ {print $2}' /proc/$pid/status 2>/dev/null)"
    sample+=" vcsw=$(awk '/^voluntary_ctxt/ {print $2}' /proc/$pid/status 2>/dev/null)"
    sample+=" ivcsw=$(awk '/^nonvoluntary_ctxt/ {print $2}' /proc/$pid/status 2>/dev/null)"
    sample+=" threads=$(ls /proc/$pid/task 2>/dev/null | wc -l)"
  fi
  wait "$pid"
  local line; line=$(grep '^bench_offline:' "$OUT/run.log")
  printf '%-16s %s %s\n' "$tag" "$(grep -oE '(decode_step_ms|host_us_p50|host_backend_us|host_frac)=[^ ]+' <<<"$line" | tr '\n' ' ')" \
    "$sample" | tee -a "$OUT/runs.txt"
  cat "$OUT/run.log" >>"$OUT/runs_full.log"
}
IFS=';' read -r -a variants <<<"$VARIANTS"
for i in $(seq "$RUNS"); do
  for v in "${variants[@]}"; do run "$v"; done
done
