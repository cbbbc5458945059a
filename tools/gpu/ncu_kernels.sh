#!/usr/bin/env bash
# Nsight Compute's full analysis of a few kernels of graph-mode decode steps, on the GPU machine
# (builds nothing there): what limits a kernel (throughputs against their peaks, L2 and DRAM
# bytes, tensor-pipe use, warp stall reasons, occupancy). Clocks and caches are left as they are.
# Usage: OUT=dir tools/gpu/ncu_kernels.sh PACK_DIR MODEL_DIR BATCH INPUT_LEN KERNEL_REGEX [SKIP] [COUNT]
#   KERNEL_REGEX  ncu's kernel-name filter (e.g. mma_linear_wg_kernel)
#   SKIP          matching launches to skip first (default 0), so that the profiled ones are in a
#                 decode step rather than the ceilings pass or prefill
#   COUNT         matching launches to profile (default 4)
# Environment: SET (ncu section set, default full), NCU, NCU_TIMEOUT (default 400 s); backend
# variables (MPSERVE_CUDA_*) pass through to the bench.
# ncu intercepts every launch of the run (the ceilings pass, the GEMM tuner, every prefill step),
# not only the profiled ones: 3B 64 x 512 and then 3B 256 x 512 in one 590-s call, the second did
# not finish. Keep the batch and the prompt small.
# Writes $OUT/ncu_<model>_b<batch>.ncu-rep and its details page (.details.txt), and prints each
# launch's throughputs, occupancy and stall summary.
set -uo pipefail
PACK=${1:?pack dir}
MODEL=${2:?model dir}
BATCH=${3:?batch}
LEN=${4:?input len}
KERNEL=${5:?kernel regex}
SKIP=${6:-0}
COUNT=${7:-4}
OUT=${OUT:-/tmp/ncu-kernels}
NCU=${NCU:-/usr/local/cuda/bin/ncu}
mkdir -p "$OUT"
rep="$OUT/ncu_$(basename "$MODEL")_b$BATCH"
source "$(dirname "$0")/ncu_decode_bench.sh"
ncu_decode_bench "$OUT/ncu_bench.log" 8 --set "${SET:-full}" --kernel-name "regex:$KERNEL" --launch-skip "$SKIP" \
  --launch-count "$COUNT" -f -o "$rep"
echo "ncu exit code $? (report: $rep.ncu-rep)"
"$NCU" --import "$rep.ncu-rep" --page details --print-units base >"$rep.details.txt" 2>&1
# The throughput summary of every launch; the whole page is in the .details.txt beside the report.
grep -E '^  [A-Za-z_]|Duration|Throughput|Pipe|Registers|Achieved Occupancy|Waves Per SM|Block Limit|Stall|Issued Ipc|Grid Size|Dynamic Shared' \
  "$rep.details.txt" | grep -vE 'OPT|INF|WRN' | head -"${LINES_MAX:-300}"
