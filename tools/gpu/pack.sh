#!/usr/bin/env bash
# Copies what the GPU machine needs from a build dir into gpu-pack/ (git-ignored; name it in
# `carry`). Keeps the carried tree small: binaries stripped, tokenizer files, no objects.
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build}
rm -rf gpu-pack && mkdir -p gpu-pack/share
for b in mpserve test_cuda test_engine; do
  [ -f "$build/$b" ] && strip -o "gpu-pack/$b" "$build/$b"
done
[ -f "$build/libmpserve_kernel_trace.so" ] && strip -o gpu-pack/libmpserve_kernel_trace.so "$build/libmpserve_kernel_trace.so"
cp -r "$build/share/mpserve" gpu-pack/share/
# The source revision the pack was made from (+dirty: sources differ from it), so that every log
# of a GPU run can say which code produced it.
dirty=$(git diff --quiet HEAD -- src tests CMakeLists.txt cmake 2>/dev/null || echo +dirty)
echo "$(git rev-parse --short HEAD)$dirty" >gpu-pack/REVISION
ldd gpu-pack/mpserve | grep -vE 'linux-vdso|libc\.so|libm\.so|ld-linux|libpthread|libdl|librt|libcublas|libcudart|libgcc_s' && \
  { echo "pack: unexpected shared library dependency above"; exit 1; } || true
du -sh gpu-pack
