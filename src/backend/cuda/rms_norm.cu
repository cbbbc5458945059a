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

__device__ __forceinline__ float sum_squares(float4 v) { return v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w; }

// One block per row; float4 accesses (hidden % 4 == 0); the row is read twice.
__global__ void __launch_bounds__(kThreads) rms_norm_kernel(const float* x, const __nv_bfloat16* weight,
                                                            __nv_bfloat16* out, const int32_t* row_index, int hidden,
                                                            float eps, bool early) {
  if (early) pdl_trigger();
  pdl_wait();  // x comes from the kernels before
  if (!early) pdl_trigger();
  const int r = blockIdx.x;
  const int64_t s = row_index ? row_index[r] : r;
  const float4* row = reinterpret_cast<const float4*>(x + s * hidden);
  const int n4 = hidden / 4;
  float ss = 0.f;
  for (int i = threadIdx.x; i < n4; i += kThreads) ss += sum_squares(row[i]);
  const float inv = rsqrtf(block_sum(ss) / static_cast<float>(hidden) + eps);
  const __nv_bfloat162* w2 = reinterpret_cast<const __nv_bfloat162*>(weight);
  __nv_bfloat162* o2 = reinterpret_cast<__nv_bfloat162*>(out + static_cast<int64_t>(r) * hidden);
  for (int i = threadIdx.x; i < n4; i += kThreads) {
    const float4 v = row[i];
    const float2 wa = __bfloat1622float2(w2[2 * i]);
    const float2 wb = __bfloat1622float2(w2[2 * i + 1]);
    o2[2 * i] = __floats2bfloat162_rn(v.x * inv * wa.x, v.y * inv * wa.y);
    o2[2 * i + 1] = __floats2bfloat162_rn(v.z * inv * wb.x, v.w * inv * wb.y);
  }
}

// The same for rows of at most kPer * kThreads * 4 values (every Qwen2.5 hidden size), held in
// registers: the weights (constant) are loaded before pdl_wait(), so after it there is one round
// trip to memory (the row) instead of two (the row, then the weights and the row again), and the
// output goes out in 8-byte stores. note: between cuBLASLt GEMMs at batch 64-256 this kernel runs
// 49-73 times a step, ~2.3 us each (0.5B 256 rows, H200 timeline).
template <int kPer>
__global__ void __launch_bounds__(kThreads) rms_norm_regs_kernel(const float* x, const __nv_bfloat16* weight,
                                                                 __nv_bfloat16* out, const int32_t* row_index,
                                                                 int hidden, float eps, bool early) {
  if (early) pdl_trigger();
  const int n4 = hidden / 4;
  const uint2* w4 = reinterpret_cast<const uint2*>(weight);  // 4 bf16 per float4 of the row
  uint2 wv[kPer];
#pragma unroll
  for (int k = 0; k < kPer; ++k) {
    const int i = threadIdx.x + k * kThreads;
    if (i < n4) wv[k] = w4[i];
  }
  const int r = blockIdx.x;
  // row_index is this step's host data (staged before the first kernel), not an earlier kernel's.
  const int64_t s = row_index ? row_index[r] : r;
  pdl_wait();  // x comes from the kernels before
  if (!early) pdl_trigger();
  const float4* row = reinterpret_cast<const float4*>(x + s * hidden);
  float4 v[kPer];
  float ss = 0.f;
#pragma unroll
  for (int k = 0; k < kPer; ++k) {
    const int i = threadIdx.x + k * kThreads;
    if (i >= n4) continue;
    v[k] = row[i];
    ss += sum_squares(v[k]);
  }
  const float inv = rsqrtf(block_sum(ss) / static_cast<float>(hidden) + eps);
  uint2* o4 = reinterpret_cast<uint2*>(out + static_cast<int64_t>(r) * hidden);
#pragma unroll
  for (int k = 0; k < kPer; ++k) {
    const int i = threadIdx.x + k * kThreads;
    if (i >= n4) continue;
    const __nv_bfloat162* w2 = reinterpret_cast<const __nv_bfloat162*>(&wv[k]);
    const float2 wa = __bfloat1622float2(w2[0]), wb = __bfloat1622float2(w2[1]);
    uint2 packed;
    __nv_bfloat162* p2 = reinterpret_cast<__nv_bfloat162*>(&packed);
    p2[0] = __floats2bfloat162_rn(v[k].x * inv * wa.x, v[k].y * inv * wa.y);
    p2[1] = __floats2bfloat162_rn(v[k].z * inv * wb.x, v[k].w * inv * wb.y);
    o4[i] = packed;
  }
}

}  // namespace

void rms_norm(const float* x, const __nv_bfloat16* weight, __nv_bfloat16* out, const int32_t* row_index, int rows,
              int hidden, float eps, cudaStream_t stream, bool early) {
  CUDA_SHAPE_CHECK(rows >= 0 && hidden > 0 && hidden % 4 == 0);
  if (rows == 0) return;
  // note: only ever between cuBLASLt GEMMs or tensor-core linears (the GEMVs fuse their norm).
  LaunchOptions opt;
  opt.max_shared = true;
  const int per = CEIL_DIV(hidden / 4, kThreads);
  auto regs = [&](auto kernel) {
    launch_kernel(kernel, dim3(rows), dim3(kThreads), opt, 0, stream, x, weight, out, row_index, hidden, eps, early);
  };
  // (8-byte weight loads and output stores: the rows of `out` and `weight` start 8-byte aligned)
  if (reinterpret_cast<uintptr_t>(weight) % 8 == 0 && reinterpret_cast<uintptr_t>(out) % 8 == 0) {
    if (per == 1) return regs(rms_norm_regs_kernel<1>);
    if (per == 2) return regs(rms_norm_regs_kernel<2>);
    if (per <= 4) return regs(rms_norm_regs_kernel<4>);
  }
  launch_kernel(rms_norm_kernel, dim3(rows), dim3(kThreads), opt, 0, stream, x, weight, out, row_index, hidden, eps,
                early);
}

}  // namespace mpserve::backend::cuda
