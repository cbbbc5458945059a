#include "backend/cuda/cuda_check.cuh"
#include "backend/cuda/pdl.cuh"
#include "backend/cuda/rms_norm.cuh"

namespace mpserve::backend::cuda {
namespace {

constexpr int kThreads = 256;

__device__ float block_sum(float v) {
  __shared__ float warp_sums[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = v;
  __syncthreads();
  float t = 0.f;
  for (int i = 0; i < kThreads / 32; ++i) t += warp_sums[i];
  return t;
}

// One block per row; float4 accesses (hidden % 4 == 0).
__global__ void __launch_bounds__(kThreads) add_rms_norm_kernel(float* residual, const float* delta,
                                                                const __nv_bfloat16* weight, __nv_bfloat16* out,
                                                                const int32_t* row_index, int hidden, float eps) {
  pdl_wait();  // residual and delta come from the kernels before
  pdl_trigger();
  const int r = blockIdx.x;
  const int64_t s = row_index ? row_index[r] : r;
  float4* res = reinterpret_cast<float4*>(residual + s * hidden);
  const float4* del = delta ? reinterpret_cast<const float4*>(delta + s * hidden) : nullptr;
  const int n4 = hidden / 4;
  float ss = 0.f;
  for (int i = threadIdx.x; i < n4; i += kThreads) {
    float4 v = res[i];
    if (del) {
      const float4 d = del[i];
      v.x += d.x, v.y += d.y, v.z += d.z, v.w += d.w;
      if (!row_index) res[i] = v;
    }
    ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
  }
  const float inv = rsqrtf(block_sum(ss) / static_cast<float>(hidden) + eps);
  const __nv_bfloat162* w2 = reinterpret_cast<const __nv_bfloat162*>(weight);
  __nv_bfloat162* o2 = reinterpret_cast<__nv_bfloat162*>(out + static_cast<int64_t>(r) * hidden);
  for (int i = threadIdx.x; i < n4; i += kThreads) {
    // Each thread re-reads only what it wrote itself, so no barrier is needed here.
    float4 v = res[i];
    if (del && row_index) {
      const float4 d = del[i];
      v.x += d.x, v.y += d.y, v.z += d.z, v.w += d.w;
    }
    const float2 wa = __bfloat1622float2(w2[2 * i]);
    const float2 wb = __bfloat1622float2(w2[2 * i + 1]);
    o2[2 * i] = __floats2bfloat162_rn(v.x * inv * wa.x, v.y * inv * wa.y);
    o2[2 * i + 1] = __floats2bfloat162_rn(v.z * inv * wb.x, v.w * inv * wb.y);
  }
}

}  // namespace

void add_rms_norm(float* residual, const float* delta, const __nv_bfloat16* weight, __nv_bfloat16* out,
                  const int32_t* row_index, int rows, int hidden, float eps, cudaStream_t stream) {
  CUDA_SHAPE_CHECK(rows >= 0 && hidden > 0 && hidden % 4 == 0);
  if (rows == 0) return;
  // note: only ever between cuBLASLt GEMMs or tensor-core linears (the GEMVs fuse their norm).
  LaunchOptions opt;
  opt.max_shared = true;
  launch_kernel(add_rms_norm_kernel, dim3(rows), dim3(kThreads), opt, 0, stream, residual, delta, weight, out,
                row_index, hidden, eps);
}

}  // namespace mpserve::backend::cuda
