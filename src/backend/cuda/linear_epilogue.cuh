// The per-element epilogues of the decode linears (gemv.cu at 1..8 rows, mma_linear.cu above):
// both kernels reduce to one f32 pair of outputs (o, o + 1) of a batch row and hand it here, so
// the two paths store bit-identical results for the same sums.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "backend/cuda/activation.cuh"
#include "backend/cuda/gemv.cuh"
#include "backend/cuda/qkv_rope.cuh"

namespace mpserve::backend::cuda {

// kQkvRope epilogue of batch row r, projection columns (o, o + 1) (o even) holding s; the same
// arithmetic as qkv_rope_kernel without q/k norm, so both give bit-identical q, k and v.
__device__ __forceinline__ void qkv_rope_store(const QkvRopeArgs& p, int r, int o, float2 s) {
  const int d = p.head_dim;
  const int head = o / d, c = o - head * d;  // c even: in q and k, the pair (dim c/2, dim c/2 + D/2)
  if (p.bias) {
    const float2 b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p.bias + o));
    s.x += b.x, s.y += b.y;
  }
  const bool is_q = head < p.n_heads, is_v = head >= p.n_heads + p.n_kv_heads;
  __nv_bfloat16* dst;  // the head's D values for row r
  if (is_q) {
    dst = p.q_out + (static_cast<int64_t>(r) * p.n_heads + head) * d;
  } else {
    const int slot = p.slot_mapping[r];
    if (slot < 0) return;  // padding row
    const int kvh = is_v ? head - p.n_heads - p.n_kv_heads : head - p.n_heads;
    const int64_t block = slot / p.block_size;
    const int off = slot - static_cast<int>(block) * p.block_size;
    dst = (is_v ? p.v_cache : p.k_cache) + ((block * p.n_kv_heads + kvh) * p.block_size + off) * d;
  }
  if (is_v) {
    *reinterpret_cast<__nv_bfloat162*>(dst + c) = __floats2bfloat162_rn(s.x, s.y);
    return;
  }
  const int i = c >> 1;
  const float2 y = rope_rotate(s.x, s.y, p.positions[r], p.inv_freq[i]);
  dst[i] = __float2bfloat16_rn(y.x);
  dst[i + d / 2] = __float2bfloat16_rn(y.y);
}

// Stores outputs (o, o + 1) of batch row r (o even, o + 1 < a.out) from their dot products s;
// kSwiGlu: s is the gate pair and up the up pair.
template <GemvOut OUT>
__device__ __forceinline__ void linear_store(const GemvArgs& a, int r, int o, float2 s, float2 up) {
  [[maybe_unused]] const int64_t yo = static_cast<int64_t>(r) * a.out + o;
  if constexpr (OUT == GemvOut::kF32) {
    *reinterpret_cast<float2*>(static_cast<float*>(a.y) + yo) = s;
  } else if constexpr (OUT == GemvOut::kBf16) {
    *reinterpret_cast<__nv_bfloat162*>(static_cast<__nv_bfloat16*>(a.y) + yo) = __floats2bfloat162_rn(s.x, s.y);
  } else if constexpr (OUT == GemvOut::kAddF32) {
    float2* y = reinterpret_cast<float2*>(static_cast<float*>(a.y) + yo);
    float2 v = *y;
    v.x += s.x, v.y += s.y;
    *y = v;
  } else if constexpr (OUT == GemvOut::kQkvRope) {
    qkv_rope_store(a.rope, r, o, s);
  } else {
    *reinterpret_cast<__nv_bfloat162*>(static_cast<__nv_bfloat16*>(a.y) + yo) = swiglu2(s, up);
  }
}

}  // namespace mpserve::backend::cuda
