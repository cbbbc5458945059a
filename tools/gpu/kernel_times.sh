#!/usr/bin/env bash
# Per-kernel device time of graph-mode decode steps, measured by Nsight Compute on the GPU
# machine: `ncu` replays each kernel (graph nodes individually) and reports gpu__time_duration;
# clocks and caches are left as they are. The sum over a step, set against the step's wall time
# from bench offline, says how much of the step is kernels and how much launch/dependency gaps.
# Usage: OUT=dir tools/gpu/kernel_times.sh PACK_DIR MODEL_DIR [BATCH] [INPUT_LEN]
# Prints a per-kernel table (median over the last STEPS decode steps, default 6) and writes the
# raw CSV to $OUT/ncu_<model>_b<batch>.csv.
set -uo pipefail
PACK=${1:?pack dir}
MODEL=${2:?model dir}
BATCH=${3:-1}
LEN=${4:-512}
STEPS=${STEPS:-6}
OUT=${OUT:-/tmp/kernel-times}
NCU=${NCU:-/usr/local/cuda/bin/ncu}
# The last TAIL steps (ncu_decode_bench.sh) run fewer rows and are left out of the median.
source "$(dirname "$0")/ncu_decode_bench.sh"
mkdir -p "$OUT"
csv="$OUT/ncu_$(basename "$MODEL")_b$BATCH.csv"
# The ceilings pass is profiled too and skipped below (steps are found by the argmax kernel that ends them).
NCU_TIMEOUT=${NCU_TIMEOUT:-300} ncu_decode_bench "$OUT/ncu_bench.log" $(( STEPS + 4 )) \
  --metrics gpu__time_duration.sum --csv --log-file "$csv"
echo "ncu exit code $? (csv: $csv)"
python3 - "$csv" "$STEPS" "$TAIL" <<'PY'
import csv, re, statistics, sys
rows = [r for r in csv.reader(l for l in open(sys.argv[1]) if l.startswith('"'))]
head, rows = rows[0], rows[1:]
ki, vi, ui = head.index("Kernel Name"), head.index("Metric Value"), head.index("Metric Unit")
scale = {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3}
ks = [(r[ki], float(r[vi].replace(",", "")) * scale.get(r[ui], 1.0)) for r in rows]
ends = [i for i, (n, _) in enumerate(ks) if "argmax_final_kernel" in n or "sample_kernel" in n]
steps = [ks[a + 1:b + 1] for a, b in zip(ends, ends[1:])]
steps = steps[:len(steps) - int(sys.argv[3])][-int(sys.argv[2]):]
def short(n):
    n = n.replace("(anonymous namespace)::", "").replace("mpserve::backend::cuda::", "")
    n = re.sub(r"^void ", "", re.sub(r"\(.*", "", n))
    return n if len(n) < 60 else n[:57] + "..."
per = {}
for s in steps:
    acc = {}
    for n, us in s:
        acc.setdefault(short(n), [0, 0.0])
        acc[short(n)][0] += 1
        acc[short(n)][1] += us
    for n, (c, us) in acc.items():
        per.setdefault(n, []).append((c, us))
tot = statistics.median(sum(us for _, us in s) for s in steps)
print(f"kernel_times: {len(steps)} decode steps, kernels per step {len(steps[-1])}, "
      f"sum of kernel times per step (median) {tot:.1f} us")
for n, v in sorted(per.items(), key=lambda kv: -statistics.median(us for _, us in kv[1])):
    print(f"  {statistics.median(us for _, us in v):9.1f} us  x{v[-1][0]:<4d} {n}")
PY
