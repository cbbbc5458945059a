#!/usr/bin/env bash
# compute-sanitizer on the GPU machine (builds nothing there): memcheck and racecheck over a short
# run of the CUDA backend: the backend tests on small in-memory models (prefill, chunked prefill,
# batched decode through graphs and eager, GPU sampler, launch/collect) and `mpserve generate
# --device cuda` of a few tokens on the embedded tiny model. Prints one line per run and a
# summary; full reports go to $OUT.
# Usage: OUT=dir tools/gpu/sanitize.sh [PACK_DIR]   (default gpu-pack, from tools/gpu/pack.sh)
# Environment: MEMCHECK_TESTS, RACECHECK_TESTS (gtest filters), SAN_TIMEOUT (seconds per run, 600).
# note: racecheck checks shared-memory hazards only and is slow (every shared access is
# tracked), so it runs the kernel tests of every kernel that uses shared memory, plus generate;
# memcheck runs with leak checking and catches out-of-bounds and
# misaligned device accesses and CUDA API errors, inside captured graphs too.
set -uo pipefail
PACK=${1:-gpu-pack}
OUT=${OUT:-/tmp/sanitize}
CS=${CS:-/usr/local/cuda/bin/compute-sanitizer}
MEMCHECK_TESTS=${MEMCHECK_TESTS:-'CudaBackendTest.qwen2_*:CudaBackendTest.qwen3_*:CudaBackendTest.decode_on_the_tensor_core_*:CudaBackendTest.graphs_on_and_off*:LaunchCollectTest.launch_collect_*:CudaKernels.*'}
RACECHECK_TESTS=${RACECHECK_TESTS:-'CudaKernels.rms_norm*:CudaKernels.attention_*:CudaKernels.decode_attention_*:CudaKernels.gemv_*:CudaKernels.mma_linear_*:CudaKernels.argmax_*:CudaKernels.sampler_*'}
mkdir -p "$OUT"
[[ -x "$CS" ]] || { echo "no $CS" >&2; exit 2; }
"$CS" --version | tail -1 | tee "$OUT/sanitize_env.txt"
export MPSERVE_TOKENIZER_DIR=$PWD/$PACK/share/mpserve/tokenizer
fail=0
run() {  # run NAME COMMAND...: one sanitizer run, its verdict line, the report in $OUT/NAME.log
  local name=$1; shift
  echo "+ $*" >"$OUT/$name.log"
  local t0=$SECONDS
  timeout "${SAN_TIMEOUT:-600}" "$@" >>"$OUT/$name.log" 2>&1
  local rc=$?
  local summary
  summary=$(grep -E '^========= (ERROR SUMMARY|RACECHECK SUMMARY|LEAK SUMMARY)' "$OUT/$name.log" | tr '\n' ' ')
  printf '%-22s rc=%-3s %4ss  %s\n' "$name" "$rc" "$((SECONDS - t0))" "${summary:-no summary (see log)}"
  [[ $rc == 0 ]] || fail=1
}
# --error-exitcode makes any finding fail the run; gtest's own failures also fail it.
run memcheck_tests "$CS" --tool memcheck --leak-check full --error-exitcode 10 \
  "$PACK/test_cuda" --gtest_filter="$MEMCHECK_TESTS"
gen=(generate --device cuda --max-tokens 8 --max-model-len 512 --max-num-seqs 8 --max-waiting 64
     --gpu-memory-fraction 0.1 --prompt "The quick brown fox" --prompt "Once upon a time")
run memcheck_generate "$CS" --tool memcheck --leak-check full --error-exitcode 10 "$PACK/mpserve" "${gen[@]}"
run racecheck_tests "$CS" --tool racecheck --racecheck-report all --error-exitcode 10 \
  "$PACK/test_cuda" --gtest_filter="$RACECHECK_TESTS"
# note: cuBLASLt's own GEMM kernels (nvjet_*) report shared-memory WAR hazards under racecheck
# (2112 in one tiny generate on an H200, CUDA 13.0, all in nvjet_sm90_tss_384x8_*, the LM-head
# GEMM of prefill); they are closed vendor kernels we can neither inspect nor change. Excluding
# them from instrumentation (--kernel-name-exclude kns=nvjet) makes racecheck itself fail ("Internal
# Sanitizer Error: failed to handle a hardware exception", then an illegal-address error in the
# next launch; measured the same with graphs and PDL off, and with an uninstrumented cuBLASLt
# linear alone). So every kernel is instrumented, every hazard printed, and the run passes when
# none is in a kernel other than nvjet_*.
racecheck_generate() {
  local log=$OUT/racecheck_generate.log t0=$SECONDS
  echo "+ racecheck ${gen[*]}" >"$log"
  timeout "${SAN_TIMEOUT:-600}" "$CS" --tool racecheck --racecheck-report hazard --print-limit 0 \
    "$PACK/mpserve" "${gen[@]}" >>"$log" 2>&1
  local rc=$?
  local ours vendor
  ours=$(grep -E '^=========     (Read|Write) Thread' "$log" | grep -vc ' at nvjet_')
  vendor=$(grep -E '^=========     (Read|Write) Thread' "$log" | grep -c ' at nvjet_')
  local verdict=0
  [[ $rc == 0 && $ours == 0 ]] || verdict=1
  printf '%-22s rc=%-3s %4ss  %s\n' racecheck_generate "$rc" "$((SECONDS - t0))" \
    "hazard accesses in our kernels: $ours, in cuBLASLt nvjet_*: $vendor; $(grep -E '^========= (RACECHECK SUMMARY|Internal)' "$log" | tr '\n' ' ')"
  [[ $verdict == 0 ]] || fail=1
}
racecheck_generate
echo "sanitize: $([[ $fail == 0 ]] && echo CLEAN || echo FINDINGS) (reports in $OUT)"
exit $fail
