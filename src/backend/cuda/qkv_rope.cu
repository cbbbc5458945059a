#include "backend/cuda/cuda_check.cuh"
#include "backend/cuda/pdl.cuh"
#include "backend/cuda/qkv_rope.cuh"

namespace mpserve::backend::cuda {
namespace {

constexpr int kWarps = 4;

// Block (token, group of kWarps heads), one warp per head: every head's chain of loads, RoPE and
// stores runs in parallel (a block per token looping its warps over the heads took 4.6 us per
// layer at batch 64 on the 0.5B shape, H200, Nsight Compute). Lane l holds dims l + 32*j of the head,
// so the rotate-half partner (i + D/2) of every dim sits in the same lane; q and k arrive in the
// pair layout (qkv_rope.cuh), where the pair of dim i is the float2 at column 2i.
template <int D>
__global__ void __launch_bounds__(kWarps * 32) qkv_rope_kernel(QkvRopeArgs a) {
  constexpr int kPer = D / 32;
  constexpr int kHalf = kPer / 2;
  pdl_wait();  // qkv comes from the projection before; the caches are read by earlier attention
  pdl_trigger();
  const int t = blockIdx.x;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int q_dim = a.n_heads * D;
  const int kv_dim = a.n_kv_heads * D;
  const int total_heads = a.n_heads + 2 * a.n_kv_heads;
  const float* row = a.qkv + static_cast<int64_t>(t) * (q_dim + 2 * kv_dim);
  const int pos = a.positions[t];
  const int slot = a.slot_mapping[t];
  {
    const int h = blockIdx.y * kWarps + warp;
    if (h >= total_heads) return;
    const int base = h * D;  // column of the head inside [q | k | v]
    const bool is_q = h < a.n_heads;
    const bool is_v = h >= a.n_heads + a.n_kv_heads;
    float x[kPer];  // x[j]: dim lane + 32 * j
    if (is_v) {
#pragma unroll
      for (int j = 0; j < kPer; ++j) {
        x[j] = row[base + lane + 32 * j];
        if (a.bias) x[j] += __bfloat162float(a.bias[base + lane + 32 * j]);
      }
    } else {
#pragma unroll
      for (int j = 0; j < kHalf; ++j) {
        const int c = base + 2 * (lane + 32 * j);  // the pair (dim i, dim i + D/2), i = lane + 32 * j
        const float2 v = *reinterpret_cast<const float2*>(row + c);
        x[j] = v.x, x[j + kHalf] = v.y;
        if (a.bias) {
          const float2 b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(a.bias + c));
          x[j] += b.x, x[j + kHalf] += b.y;
        }
      }
      const __nv_bfloat16* nw = is_q ? a.q_norm : a.k_norm;
      if (nw) {
        float ss = 0.f;
#pragma unroll
        for (int j = 0; j < kPer; ++j) ss += x[j] * x[j];
        for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
        const float inv = rsqrtf(ss / D + a.eps);
#pragma unroll
        for (int j = 0; j < kPer; ++j) x[j] = x[j] * inv * __bfloat162float(nw[lane + 32 * j]);
      }
#pragma unroll
      for (int j = 0; j < kHalf; ++j) {
        const float2 y = rope_rotate(x[j], x[j + kHalf], pos, a.inv_freq[lane + 32 * j]);
        x[j] = y.x, x[j + kHalf] = y.y;
      }
    }
    if (is_q) {
      __nv_bfloat16* dst = a.q_out + static_cast<int64_t>(t) * q_dim + base;
#pragma unroll
      for (int j = 0; j < kPer; ++j) dst[lane + 32 * j] = __float2bfloat16_rn(x[j]);
    } else if (slot >= 0) {
      const int kvh = is_v ? h - a.n_heads - a.n_kv_heads : h - a.n_heads;
      const int64_t block = slot / a.block_size;
      const int off = slot - static_cast<int>(block) * a.block_size;
      __nv_bfloat16* cache = is_v ? a.v_cache : a.k_cache;
      __nv_bfloat16* dst = cache + ((block * a.n_kv_heads + kvh) * a.block_size + off) * D;
#pragma unroll
      for (int j = 0; j < kPer; ++j) dst[lane + 32 * j] = __float2bfloat16_rn(x[j]);
    }
  }
}

}  // namespace

void qkv_rope_cache_write(const QkvRopeArgs& a, cudaStream_t stream) {
  CUDA_SHAPE_CHECK(a.num_tokens >= 0 && a.n_heads > 0 && a.n_kv_heads > 0 && a.n_heads % a.n_kv_heads == 0);
  CUDA_SHAPE_CHECK(a.head_dim == 64 || a.head_dim == 128);
  CUDA_SHAPE_CHECK(a.block_size > 0 && a.qkv && a.q_out && a.k_cache && a.v_cache && a.inv_freq);
  if (a.num_tokens == 0) return;
  const int heads = a.n_heads + 2 * a.n_kv_heads;
  launch_kernel(a.head_dim == 64 ? qkv_rope_kernel<64> : qkv_rope_kernel<128>,
                dim3(a.num_tokens, CEIL_DIV(heads, kWarps)), dim3(kWarps * 32), 0, stream, a);
}

}  // namespace mpserve::backend::cuda
