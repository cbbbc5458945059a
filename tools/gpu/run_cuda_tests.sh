#!/usr/bin/env bash
# Runs the prebuilt CUDA kernel and backend tests on the GPU machine (builds nothing there).
# Usage: tools/gpu/run_cuda_tests.sh [BUILD_DIR]   (default build-cuda)
# Prints one line per test and a summary; the full log and the gtest XML go to $OUT (or /tmp).
set -uo pipefail
BUILD_DIR=${1:-build-cuda}
OUT=${OUT:-/tmp/cuda-tests}
mkdir -p "$OUT"
BIN="$BUILD_DIR/test_cuda"
if [[ ! -x "$BIN" ]]; then
  echo "no $BIN: build it first (cmake --build $BUILD_DIR --target test_cuda)" >&2
  exit 2
fi
{
  echo "pack revision: $(cat "$BUILD_DIR/REVISION" 2>/dev/null || echo unknown)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  ldd "$BIN" | grep -E "cuda|cublas|not found" || true
} 2>&1 | tee "$OUT/env.txt"
"$BIN" --gtest_output="xml:$OUT/test_cuda.xml" >"$OUT/test_cuda.log" 2>&1
rc=$?
# One line per test: status, name, time.
grep -E '^\[ +(OK|FAILED|SKIPPED) +\] [A-Za-z_]+\.[A-Za-z0-9_]+ \(' "$OUT/test_cuda.log" |
  sed -E 's/^\[ +([A-Z]+) +\] ([^ ]+) \(([0-9]+ ms)\)/\1 \2 \3/'
grep -E 'Failure|Expected|Which is|rel err|error' "$OUT/test_cuda.log" | head -40
grep -E '^\[  (PASSED|FAILED)  \]' "$OUT/test_cuda.log"
echo "test_cuda exit code $rc (full log: $OUT/test_cuda.log)"
exit $rc
