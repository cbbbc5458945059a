#include <cstdint>

#include "backend/cuda/activation.cuh"
#include "backend/cuda/cuda_check.cuh"
#include "backend/cuda/pdl.cuh"

namespace mpserve::backend::cuda {
namespace {

// One thread per bf16 pair; grid covers rows * inter / 2 pairs.
__global__ void silu_mul_kernel(const __nv_bfloat162* gate_up, __nv_bfloat162* out, int64_t total_pairs,
                                int half_inter) {
  pdl_wait();  // gate_up comes from the GEMM before (every thread waits, also those past the end)
  pdl_trigger();
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= total_pairs) return;
  const int64_t row = i / half_inter;
  const int64_t col = i - row * half_inter;
  const float2 g = __bfloat1622float2(gate_up[row * 2 * half_inter + col]);
  const float2 u = __bfloat1622float2(gate_up[row * 2 * half_inter + half_inter + col]);
  const float a = g.x / (1.f + expf(-g.x)) * u.x;
  const float b = g.y / (1.f + expf(-g.y)) * u.y;
  out[i] = __floats2bfloat162_rn(a, b);
}

}  // namespace

void silu_mul(const __nv_bfloat16* gate_up, __nv_bfloat16* out, int rows, int inter, cudaStream_t stream) {
  CUDA_SHAPE_CHECK(rows >= 0 && inter > 0 && inter % 2 == 0);
  if (rows == 0) return;
  const int64_t pairs = static_cast<int64_t>(rows) * (inter / 2);
  const int threads = 256;
  LaunchOptions opt;
  opt.max_shared = true;  // only ever between cuBLASLt GEMMs
  launch_kernel(silu_mul_kernel, dim3(static_cast<unsigned>(CEIL_DIV(pairs, threads))), dim3(threads), opt, 0,
                stream, reinterpret_cast<const __nv_bfloat162*>(gate_up), reinterpret_cast<__nv_bfloat162*>(out), pairs,
                inter / 2);
}

}  // namespace mpserve::backend::cuda
