// Decode attention: one query token per sequence, all heads of a GQA group in one block.
// note: three phases over a partition of at most kDecodeMaxPartition keys. (1) scores: a group of
// D/8 lanes takes one key, each lane one 16-byte chunk of it, and scores it against every query
// head of the group (the queries sit in registers), so each key is read once per group. (2) the
// softmax of each head over the partition (one warp per head, in shared memory). (3) values: each
// thread owns one 16-byte chunk of D for a strided subset of the keys, accumulates all heads, and
// the key subsets are summed through shared memory (aliasing the scores, after a barrier).
#include <cmath>

#include "backend/cuda/attention.cuh"
#include "backend/cuda/cuda_check.cuh"

namespace mpserve::backend::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kG = kDecodeMaxGroup;
constexpr int kUnroll = 4;  // keys in flight per lane group in phase 1

__device__ __forceinline__ void unpack8(const uint4& v, float* f) {
  const __nv_bfloat162* p = reinterpret_cast<const __nv_bfloat162*>(&v);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 t = __bfloat1622float2(p[i]);
    f[2 * i] = t.x, f[2 * i + 1] = t.y;
  }
}

template <int D>
constexpr size_t smem_bytes() {
  constexpr size_t scores = sizeof(float) * kG * kDecodeMaxPartition;
  constexpr size_t red = sizeof(float) * (kThreads / (D / 8)) * kG * D;
  return scores > red ? scores : red;
}

template <int D>
__global__ void __launch_bounds__(kThreads) decode_attention_kernel(DecodeAttentionArgs a) {
  constexpr int kChunks = D / 8;               // 16-byte chunks per key
  constexpr int kKeysPerWarp = 32 / kChunks;   // phase 1
  constexpr int kKeyLanes = kThreads / kChunks;  // phase 3
  extern __shared__ __align__(16) float smem_f[];
  float* scores = smem_f;  // [kG][kDecodeMaxPartition], later [kKeyLanes][kG][D]
  __shared__ float m_s[kG], l_s[kG];

  const int tok = blockIdx.x, kvh = blockIdx.y, part = blockIdx.z;
  const int kv_len = a.positions[tok] + 1;
  const int P = a.partition_size;
  const int k_begin = part * P;
  if (k_begin >= kv_len) return;
  const int k_end = min(kv_len, k_begin + P);
  const int n = k_end - k_begin;
  const int num_parts = CEIL_DIV(kv_len, P);
  const int group = a.n_heads / a.n_kv_heads;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int32_t* table = a.block_tables + static_cast<int64_t>(tok) * a.max_blocks_per_seq;
  auto chunk_ptr = [&](const __nv_bfloat16* cache, int key, int c) {
    const int64_t blk = table[key / a.block_size];
    const int off = key % a.block_size;
    return reinterpret_cast<const uint4*>(cache + ((blk * a.n_kv_heads + kvh) * a.block_size + off) * D + c * 8);
  };

  // Phase 1: scores.
  {
    const int c = lane % kChunks, gi = lane / kChunks;
    float q[kG][8];
#pragma unroll
    for (int g = 0; g < kG; ++g) {
      if (g < group) {
        const __nv_bfloat16* qp = a.q + (static_cast<int64_t>(tok) * a.n_heads + kvh * group + g) * D + c * 8;
        unpack8(*reinterpret_cast<const uint4*>(qp), q[g]);
      } else {
#pragma unroll
        for (int j = 0; j < 8; ++j) q[g][j] = 0.f;
      }
    }
    constexpr int kStep = kWarps * kKeysPerWarp;
    // The loop bound is warp-uniform (the shuffles below need the whole warp); keys are guarded.
    for (int base = k_begin + warp * kKeysPerWarp; base < k_end; base += kStep * kUnroll) {
      uint4 kv[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int key = base + gi + u * kStep;
        kv[u] = key < k_end ? *chunk_ptr(a.k_cache, key, c) : make_uint4(0, 0, 0, 0);
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int key = base + gi + u * kStep;
        float kf[8];
        unpack8(kv[u], kf);
        float s[kG];
#pragma unroll
        for (int g = 0; g < kG; ++g) {
          s[g] = 0.f;
#pragma unroll
          for (int j = 0; j < 8; ++j) s[g] = fmaf(q[g][j], kf[j], s[g]);
#pragma unroll
          for (int o = kChunks / 2; o > 0; o >>= 1) s[g] += __shfl_xor_sync(0xffffffffu, s[g], o);
        }
        if (c == 0 && key < k_end) {
#pragma unroll
          for (int g = 0; g < kG; ++g)
            if (g < group) scores[g * kDecodeMaxPartition + key - k_begin] = s[g] * a.scale;
        }
      }
    }
  }
  __syncthreads();

  // Phase 2: softmax over the partition, one warp per head.
  for (int g = warp; g < group; g += kWarps) {
    float* sg = scores + g * kDecodeMaxPartition;
    float m = -INFINITY;
    for (int i = lane; i < n; i += 32) m = fmaxf(m, sg[i]);
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    float l = 0.f;
    for (int i = lane; i < n; i += 32) {
      const float p = expf(sg[i] - m);
      sg[i] = p;
      l += p;
    }
    for (int o = 16; o > 0; o >>= 1) l += __shfl_xor_sync(0xffffffffu, l, o);
    if (lane == 0) m_s[g] = m, l_s[g] = l;
  }
  __syncthreads();

  // Phase 3: values.
  const int c = threadIdx.x % kChunks, kl = threadIdx.x / kChunks;
  float acc[kG][8];
#pragma unroll
  for (int g = 0; g < kG; ++g)
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[g][j] = 0.f;
  for (int base = k_begin + kl; base < k_end; base += 2 * kKeyLanes) {
    uint4 vv[2];
#pragma unroll
    for (int u = 0; u < 2; ++u) {
      const int key = base + u * kKeyLanes;
      vv[u] = key < k_end ? *chunk_ptr(a.v_cache, key, c) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < 2; ++u) {
      const int key = base + u * kKeyLanes;
      if (key >= k_end) break;
      float vf[8];
      unpack8(vv[u], vf);
#pragma unroll
      for (int g = 0; g < kG; ++g) {
        if (g >= group) break;
        const float p = scores[g * kDecodeMaxPartition + key - k_begin];
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[g][j] = fmaf(p, vf[j], acc[g][j]);
      }
    }
  }
  __syncthreads();  // scores consumed: the region becomes the reduction buffer
  float* red = smem_f;  // [kKeyLanes][kG][D]
#pragma unroll
  for (int g = 0; g < kG; ++g) {
    if (g >= group) break;
    float4* dst = reinterpret_cast<float4*>(red + (kl * kG + g) * D + c * 8);
    dst[0] = make_float4(acc[g][0], acc[g][1], acc[g][2], acc[g][3]);
    dst[1] = make_float4(acc[g][4], acc[g][5], acc[g][6], acc[g][7]);
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < group * D; idx += kThreads) {
    const int g = idx / D, d = idx - g * D;
    float sum = 0.f;
#pragma unroll 4
    for (int k = 0; k < kKeyLanes; ++k) sum += red[(k * kG + g) * D + d];
    const float inv = 1.f / l_s[g];
    const int head = kvh * group + g;
    if (num_parts == 1) {
      a.out[(static_cast<int64_t>(tok) * a.n_heads + head) * D + d] = __float2bfloat16_rn(sum * inv);
    } else {
      const int64_t row = (static_cast<int64_t>(part) * a.num_tokens + tok) * a.n_heads + head;
      a.partial_o[row * D + d] = sum * inv;
      if (d == 0) {
        a.partial_ml[row * 2] = m_s[g];
        a.partial_ml[row * 2 + 1] = l_s[g];
      }
    }
  }
}

// Block = (token, head), D threads: merges the partitions of sequences that have several.
__global__ void decode_reduce_kernel(DecodeAttentionArgs a) {
  const int tok = blockIdx.x, head = blockIdx.y, d = threadIdx.x;
  const int D = a.head_dim;
  const int num_parts = CEIL_DIV(a.positions[tok] + 1, a.partition_size);
  if (num_parts == 1) return;
  const int64_t stride = static_cast<int64_t>(a.num_tokens) * a.n_heads;
  const int64_t row0 = static_cast<int64_t>(tok) * a.n_heads + head;
  float m_max = -INFINITY;
  for (int s = 0; s < num_parts; ++s) m_max = fmaxf(m_max, a.partial_ml[(s * stride + row0) * 2]);
  float num = 0.f, den = 0.f;
  for (int s = 0; s < num_parts; ++s) {
    const int64_t row = s * stride + row0;
    const float w = expf(a.partial_ml[row * 2] - m_max) * a.partial_ml[row * 2 + 1];
    num += w * a.partial_o[row * D + d];
    den += w;
  }
  a.out[row0 * D + d] = __float2bfloat16_rn(num / den);
}

}  // namespace

void decode_attention(const DecodeAttentionArgs& a, cudaStream_t stream) {
  CUDA_SHAPE_CHECK(a.n_heads > 0 && a.n_kv_heads > 0 && a.n_heads % a.n_kv_heads == 0);
  CUDA_SHAPE_CHECK(a.n_heads / a.n_kv_heads <= kDecodeMaxGroup);
  CUDA_SHAPE_CHECK(a.head_dim == 64 || a.head_dim == 128);
  CUDA_SHAPE_CHECK(a.partition_size > 0 && a.partition_size % 32 == 0 && a.partition_size <= kDecodeMaxPartition);
  CUDA_SHAPE_CHECK(a.max_partitions >= 1 && a.block_size > 0 && a.max_blocks_per_seq > 0);
  CUDA_SHAPE_CHECK(a.max_partitions * a.partition_size >= a.max_blocks_per_seq * a.block_size);
  CUDA_SHAPE_CHECK(a.max_partitions == 1 || (a.partial_o && a.partial_ml));
  if (a.num_tokens == 0) return;
  const dim3 grid(a.num_tokens, a.n_kv_heads, a.max_partitions);
  if (a.head_dim == 64) {
    decode_attention_kernel<64><<<grid, kThreads, smem_bytes<64>(), stream>>>(a);
  } else {
    decode_attention_kernel<128><<<grid, kThreads, smem_bytes<128>(), stream>>>(a);
  }
  CUDA_CHECK_LAUNCH();
  if (a.max_partitions > 1) {
    decode_reduce_kernel<<<dim3(a.num_tokens, a.n_heads), a.head_dim, 0, stream>>>(a);
    CUDA_CHECK_LAUNCH();
  }
}

}  // namespace mpserve::backend::cuda
