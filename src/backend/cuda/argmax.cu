// Greedy sampling as a two-pass parallel argmax over the vocab (sampler.cuh).
#include <climits>
#include <cmath>

#include "backend/cuda/cuda_check.cuh"
#include "backend/cuda/pdl.cuh"
#include "backend/cuda/sampler.cuh"

namespace mpserve::backend::cuda {
namespace {

constexpr int kThreads = 256;

// (v, i) beats (bv, bi): larger value, ties to the lower id; NaN never wins.
__device__ __forceinline__ bool better(float v, int i, float bv, int bi) {
  return v > bv || (v == bv && i < bi);
}

__device__ __forceinline__ void warp_argmax(float& v, int& i) {
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, v, o);
    const int oi = __shfl_xor_sync(0xffffffffu, i, o);
    if (better(ov, oi, v, i)) v = ov, i = oi;
  }
}

// Block (row, chunk): float4 loads over its slice of the row (vocab % 4 == 0).
__global__ void __launch_bounds__(kThreads) argmax_partial_kernel(const float* logits, float* pv, int32_t* pi,
                                                                  int vocab) {
  pdl_wait();  // the logits come from the LM head
  pdl_trigger();
  const int row = blockIdx.x, chunk = blockIdx.y;
  const int n4 = vocab / 4;
  const int per = CEIL_DIV(n4, kArgmaxChunks);
  const int b = chunk * per, e = min(n4, b + per);
  const float4* x = reinterpret_cast<const float4*>(logits + static_cast<int64_t>(row) * vocab);
  float best = -INFINITY;
  int best_i = INT_MAX;
  for (int j = b + threadIdx.x; j < e; j += kThreads) {
    const float4 v = x[j];
    if (better(v.x, 4 * j, best, best_i)) best = v.x, best_i = 4 * j;
    if (better(v.y, 4 * j + 1, best, best_i)) best = v.y, best_i = 4 * j + 1;
    if (better(v.z, 4 * j + 2, best, best_i)) best = v.z, best_i = 4 * j + 2;
    if (better(v.w, 4 * j + 3, best, best_i)) best = v.w, best_i = 4 * j + 3;
  }
  warp_argmax(best, best_i);
  __shared__ float sv[kThreads / 32];
  __shared__ int si[kThreads / 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) sv[warp] = best, si[warp] = best_i;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kThreads / 32; ++w)
      if (better(sv[w], si[w], best, best_i)) best = sv[w], best_i = si[w];
    pv[row * kArgmaxChunks + chunk] = best;
    pi[row * kArgmaxChunks + chunk] = best_i;
  }
}

__global__ void argmax_final_kernel(const float* pv, const int32_t* pi, int32_t* out, int vocab) {
  pdl_wait();  // the partials come from argmax_partial_kernel
  pdl_trigger();
  const int row = blockIdx.x, lane = threadIdx.x;
  float best = -INFINITY;
  int best_i = INT_MAX;
  for (int c = lane; c < kArgmaxChunks; c += 32)
    if (better(pv[row * kArgmaxChunks + c], pi[row * kArgmaxChunks + c], best, best_i))
      best = pv[row * kArgmaxChunks + c], best_i = pi[row * kArgmaxChunks + c];
  warp_argmax(best, best_i);
  if (lane == 0) out[row] = best_i < vocab ? best_i : 0;  // all NaN or -inf: token 0
}

}  // namespace

void argmax_rows(const float* logits, float* partial_val, int32_t* partial_idx, int32_t* out_tokens, int rows,
                 int vocab, cudaStream_t stream) {
  CUDA_SHAPE_CHECK(rows >= 0 && vocab > 0 && vocab % 4 == 0);
  if (rows == 0) return;
  launch_kernel(argmax_partial_kernel, dim3(rows, kArgmaxChunks), dim3(kThreads), 0, stream, logits, partial_val,
                partial_idx, vocab);
  launch_kernel(argmax_final_kernel, dim3(rows), dim3(32), 0, stream, partial_val, partial_idx, out_tokens, vocab);
}

}  // namespace mpserve::backend::cuda
