#!/usr/bin/env bash
# Where the time of a graph-mode decode step goes, from a timeline of the real run (every kernel,
# graph nodes included, timed by CUPTI through the LD_PRELOAD library kernel_trace.cpp builds)
# instead of kernels replayed in isolation (kernel_times.sh). Under PDL a kernel starts before its
# predecessor ends and waits inside, so its own duration says little; what it adds to the step is
# the time from the end of the kernels before it to its own end. Per kernel name this prints the
# median of that increment, the median duration, and how many instances started before the
# previous kernel ended, over the last STEPS decode steps.
# Usage: OUT=dir tools/gpu/step_timeline.sh PACK_DIR MODEL_DIR [BATCH] [INPUT_LEN]
# Environment: STEPS (default 8), VARIANT (env settings for the run, e.g. "MPSERVE_CUDA_PDL=0").
# Writes the raw trace to $OUT/trace_<model>_b<batch>_<input>.csv.
set -uo pipefail
PACK=${1:?pack dir}
MODEL=${2:?model dir}
BATCH=${3:-1}
LEN=${4:-128}
STEPS=${STEPS:-8}
OUT=${OUT:-/tmp/step-timeline}
LIB="$PWD/$PACK/libmpserve_kernel_trace.so"
[[ -f "$LIB" ]] || { echo "step_timeline: no $LIB (a CUDA build has it; tools/gpu/pack.sh copies it)" >&2; exit 2; }
mkdir -p "$OUT"
TAIL=$(( BATCH * LEN / 2048 ))
csv="$OUT/trace_$(basename "$MODEL")_b${BATCH}_${LEN}.csv"
env ${VARIANT:-} MPSERVE_KERNEL_TRACE="$csv" LD_PRELOAD="$LIB" timeout "${TRACE_TIMEOUT:-240}" \
  "$PACK/mpserve" bench offline --model "$MODEL" --device cuda --max-num-seqs $(( BATCH > 8 ? BATCH : 8 )) \
  --max-num-batched-tokens 2048 --max-model-len $((LEN + 64 + TAIL + STEPS)) --batch "$BATCH" --input-len "$LEN" \
  --output-len $((STEPS + 8 + TAIL)) --repeats 1 --warmup 0 >"$csv.bench.log" 2>&1
echo "bench exit code $? (trace: $csv, $(($(wc -l <"$csv") - 1)) kernels)"
grep -h "bench_offline:" "$csv.bench.log" | grep -o "decode_step_ms=[^ ]*" | sed "s/^/traced run: /"
python3 - "$csv" "$STEPS" "$TAIL" <<'PY'
import csv, re, statistics, sys
ks = [(r["name"], int(r["start_ns"]) / 1e3, int(r["end_ns"]) / 1e3) for r in csv.DictReader(open(sys.argv[1]))]
ks.sort(key=lambda k: k[1])
ends = [i for i, (n, _, _) in enumerate(ks) if "argmax_final_kernel" in n or "sample_kernel" in n]
steps = [ks[a + 1:b + 1] for a, b in zip(ends, ends[1:])]
steps = steps[:len(steps) - int(sys.argv[3])][-int(sys.argv[2]):]
def short(n):
    n = n.replace("(anonymous namespace)::", "").replace("mpserve::backend::cuda::", "")
    depth = 0  # drop the parameter list: the first '(' outside template arguments
    for i, ch in enumerate(n):
        depth += (ch == "<") - (ch == ">")
        if ch == "(" and depth == 0 and i > 0:
            n = n[:i]
            break
    n = re.sub(r"^void ", "", n)
    n = re.sub(r"\((GemvIn|GemvOut)\)", "", n)
    return n if len(n) < 60 else n[:57] + "..."
per = {}
wall = []
for s in steps:
    wall.append(s[-1][2] - s[0][1])
    acc = {}
    prev_end = s[0][1]
    for n, b, e in s:
        a = acc.setdefault(short(n), [0, 0.0, 0.0, 0])
        a[0] += 1
        a[1] += max(0.0, e - prev_end)  # what this kernel added to the step
        a[2] += e - b
        a[3] += b < prev_end
        prev_end = max(prev_end, e)
    for n, v in acc.items():
        per.setdefault(n, []).append(v)
print(f"step_timeline: {len(steps)} decode steps, {len(steps[-1])} kernels each, first start to last end "
      f"(median) {statistics.median(wall):.1f} us")
print("   added us   duration us   early-start  count  kernel")
for n, v in sorted(per.items(), key=lambda kv: -statistics.median(x[1] for x in kv[1])):
    c = v[-1][0]
    print(f"  {statistics.median(x[1] for x in v):9.1f}   {statistics.median(x[2] for x in v):11.1f}"
          f"   {statistics.median(x[3] for x in v):5.0f}/{c:<4d}  x{c:<4d} {n}")
PY
