// After the fused QKV projection: bias, Qwen3 per-head q/k RMSNorm, RoPE, and the K/V write into
// the paged cache.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace mpserve::backend::cuda {

// note: KV-cache layout, per layer and for K and V separately: (num_blocks, n_kv_heads,
// block_size, head_dim) bf16. A (block, kv head) pair is one contiguous block_size*head_dim run,
// so the attention kernels read a key tile of one head as contiguous rows. Slot
// s = block * block_size + offset.
struct QkvRopeArgs {
  const float* qkv = nullptr;            // (T, Q + 2K) f32: [q | k | v] per token
  const __nv_bfloat16* bias = nullptr;   // (Q + 2K) or null
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

}  // namespace mpserve::backend::cuda
