// After the fused QKV projection: bias, Qwen3 per-head q/k RMSNorm, RoPE, and the K/V write into
// the paged cache. Decode steps on the fused GEMV path without q/k norm do the same work in the
// GEMV's epilogue instead (GemvOut::kQkvRope, gemv.cuh).
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace mpserve::backend::cuda {

// note: KV-cache layout, per layer and for K and V separately: (num_blocks, n_kv_heads,
// block_size, head_dim) bf16. A (block, kv head) pair is one contiguous block_size*head_dim run,
// so the attention kernels read a key tile of one head as contiguous rows. Slot
// s = block * block_size + offset.
// note: RoPE pair layout. On the device the rows of q_proj and k_proj and of their biases, and
// so the q and k columns of the projection's output, are reordered within each head: column 2i
// holds dim i and column 2i + 1 dim i + D/2, its rotate-half partner. One thread of an MMA
// accumulator (columns 2t, 2t + 1) or one float2 load then holds a whole pair. v keeps its
// natural order; q_out and the cache are in natural order. The uploader reorders
// (weights_upload.h), once, on the one weight copy that every path reads.
//
// Natural index (dim within the head, plus the head's offset) of pair-layout index i.
inline int64_t rope_pair_source(int64_t i, int64_t head_dim) {
  const int64_t c = i % head_dim;
  return i - c + (c % 2 == 0 ? c / 2 : c / 2 + head_dim / 2);
}

struct QkvRopeArgs {
  const float* qkv = nullptr;            // (T, Q + 2K) f32: [q | k | v] per token, q and k in the pair layout
  const __nv_bfloat16* bias = nullptr;   // (Q + 2K) or null, q and k in the pair layout
  const __nv_bfloat16* q_norm = nullptr; // (D) or null (Qwen3)
  const __nv_bfloat16* k_norm = nullptr; // (D) or null
  const float* inv_freq = nullptr;       // (D/2)
  const int32_t* positions = nullptr;    // (T)
  const int32_t* slot_mapping = nullptr; // (T); < 0 = padding, nothing written
  __nv_bfloat16* q_out = nullptr;        // (T, Q) bf16
  __nv_bfloat16* k_cache = nullptr;      // this layer's K, layout above
  __nv_bfloat16* v_cache = nullptr;      // this layer's V
  int num_tokens = 0;
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;   // 64 or 128
  int block_size = 0;
  float eps = 1e-6f;
};

void qkv_rope_cache_write(const QkvRopeArgs& a, cudaStream_t stream);

#ifdef __CUDACC__
// Rotates one rotate-half pair (x1, x2) = dims (i, i + D/2) by the angle float(pos) * inv_freq[i]
// (the reference's f32 angle, as transformers computes it).
// note: shared by qkv_rope_kernel and the GEMV epilogue, with explicitly rounded operations (no
// FMA contraction), so both paths give bit-identical q and k. sincosf carries a slow-path
// argument reduction in local memory that made the GEMV spill; instead the angle is reduced to
// [-pi, pi] in double (exact enough for any position) and __sincosf (absolute error < 2^-21
// there) does the rest.
__device__ __forceinline__ float2 rope_rotate(float x1, float x2, int pos, float inv_freq) {
  const float a = __fmul_rn(static_cast<float>(pos), inv_freq);
  const double turns = rint(static_cast<double>(a) * 0.15915494309189535);  // a / (2 pi)
  float s, c;
  __sincosf(static_cast<float>(fma(-turns, 6.283185307179586, static_cast<double>(a))), &s, &c);
  return make_float2(__fsub_rn(__fmul_rn(x1, c), __fmul_rn(x2, s)), __fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, s)));
}
#endif

}  // namespace mpserve::backend::cuda
