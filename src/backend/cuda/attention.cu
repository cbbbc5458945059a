// Paged causal GQA attention for prefill and chunked prefill on tensor cores (flash-attention
// style), plus the split-K merge.
// note: a block is (work item, kv head, split) with 64 query rows r = (token r / G, q head
// kvh*G + r % G), 16 per warp, so every key and value is loaded once for the whole GQA group.
// Keys stream through shared memory in tiles of 64 (cp.async, two stages: the next tile loads while
// this one is used). Per tile each warp computes S = Q K^T (mma.sync m16n8k16 bf16, f32 accumulate),
// masks causally by each row's position, updates an online softmax in registers (exp2 with the
// scale folded in), and accumulates O += P V with P rounded to bf16 straight from the S
// accumulators (their layout is the A-operand layout). Items are taken last first: later tokens of
// a prompt see more keys, so the longest blocks start first and the tail is short.
#include <cmath>
#include <cstdint>

#include "backend/cuda/attention.cuh"
#include "backend/cuda/cuda_check.cuh"
#include "backend/cuda/mma.cuh"
#include "backend/cuda/pdl.cuh"

namespace mpserve::backend::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kMaxRows = 16 * kWarps;  // query rows (token, head) per block
constexpr int kKeys = 64;              // keys per shared-memory tile
constexpr int kPad = 8;                // bf16 per smem row past D: rows 16 B apart mod 128 B, so the
                                       // eight row addresses of an ldmatrix hit distinct banks

template <int D>
constexpr size_t smem_bytes() {
  // Q [kMaxRows][D+kPad] | K [2][kKeys][D+kPad] | V [2][kKeys][D+kPad] (bf16) | row positions
  return sizeof(__nv_bfloat16) * (kMaxRows + 4 * kKeys) * (D + kPad) + sizeof(int) * kMaxRows;
}


__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// Fragment layouts (PTX ISA, mma.m16n8k16): with g = lane / 4, t = lane % 4, the accumulator
// holds rows g and g + 8, columns 2t and 2t + 1 of its 16x8 tile; A register i holds row
// g + 8 * (i % 2), columns 2t + 8 * (i / 2) (+1); B register i holds rows (k) 2t + 8 * i (+1),
// column (n) g.
template <int D>
__global__ void __launch_bounds__(kThreads) attention_kernel(AttentionArgs a) {
  constexpr int S = D + kPad;     // smem row stride, elements
  constexpr int kChunks = D / 8;  // 16-byte chunks per row
  extern __shared__ __align__(16) unsigned char smem[];
  __nv_bfloat16* q_s = reinterpret_cast<__nv_bfloat16*>(smem);
  __nv_bfloat16* k_s = q_s + kMaxRows * S;  // [2][kKeys][S]
  __nv_bfloat16* v_s = k_s + 2 * kKeys * S;  // [2][kKeys][S]
  int* qpos_s = reinterpret_cast<int*>(v_s + 2 * kKeys * S);

  pdl_wait();  // q and the KV cache come from the kernels before this one
  pdl_trigger();
  const int4 item = reinterpret_cast<const int4*>(a.items)[a.num_items - 1 - static_cast<int>(blockIdx.x)];
  const int seq = item.x, tok0 = item.y, ntok = item.z;
  const int kvh = blockIdx.y;
  const int split = blockIdx.z;
  const int group = a.n_heads / a.n_kv_heads;
  const int rows = ntok * group;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

  for (int idx = tid; idx < kMaxRows * kChunks; idx += kThreads) {
    const int r = idx / kChunks, c = idx % kChunks;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (r < rows) {
      const int tok = tok0 + r / group, head = kvh * group + r % group;
      v = *reinterpret_cast<const uint4*>(a.q + (static_cast<int64_t>(tok) * a.n_heads + head) * D + c * 8);
    }
    *reinterpret_cast<uint4*>(q_s + r * S + c * 8) = v;
  }
  for (int r = tid; r < kMaxRows; r += kThreads) qpos_s[r] = r < rows ? a.positions[tok0 + r / group] : -1;

  const int kv_len = a.positions[tok0 + ntok - 1] + 1;
  const int min_pos = a.positions[tok0];
  const int chunk = CEIL_DIV(CEIL_DIV(kv_len, a.num_splits), kKeys) * kKeys;
  const int k_begin = split * chunk;
  const int k_end = min(kv_len, k_begin + chunk);
  const int n_tiles = k_end > k_begin ? CEIL_DIV(k_end - k_begin, kKeys) : 0;
  const int32_t* table = a.block_tables + static_cast<int64_t>(seq) * a.max_blocks_per_seq;

  // Each thread copies chunk c = tid % kChunks of keys tid / kChunks + j * (kThreads / kChunks).
  auto load_tile = [&](int stage, int k0) {
    __nv_bfloat16* ks = k_s + stage * kKeys * S;
    __nv_bfloat16* vs = v_s + stage * kKeys * S;
    const int c = tid % kChunks;
#pragma unroll
    for (int j = tid / kChunks; j < kKeys; j += kThreads / kChunks) {
      const int key = k0 + j;
      const bool valid = key < k_end;
      int64_t src = c * 8;
      if (valid) {
        const int64_t blk = table[key / a.block_size];
        src += ((blk * a.n_kv_heads + kvh) * a.block_size + key % a.block_size) * D;
      }
      cp_async16(ks + j * S + c * 8, a.k_cache + src, valid);
      cp_async16(vs + j * S + c * 8, a.v_cache + src, valid);
    }
  };

  if (n_tiles > 0) load_tile(0, k_begin);
  cp_async_commit();
  __syncthreads();  // q_s and qpos_s written

  uint32_t qf[D / 16][4];
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk)
    ldmatrix_x4(qf[kk], q_s + (warp * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * S + kk * 16 + (lane >> 4) * 8);
  const int r0 = warp * 16 + (lane >> 2), r1 = r0 + 8;
  const int pos0 = qpos_s[r0], pos1 = qpos_s[r1];
  const int t2 = (lane & 3) * 2;

  float o[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;  // raw-score max, thread-partial sums
  const float sl2 = a.scale * kLog2e;

  for (int t = 0; t < n_tiles; ++t) {
    const int k0 = k_begin + t * kKeys;
    if (t + 1 < n_tiles) load_tile((t + 1) & 1, k0 + kKeys);
    cp_async_commit();
    cp_async_wait<1>();  // this thread's copies of tile t are done
    __syncthreads();     // and everyone's
    const __nv_bfloat16* ks = k_s + (t & 1) * kKeys * S;
    const __nv_bfloat16* vs = v_s + (t & 1) * kKeys * S;

    float s[kKeys / 8][4];
#pragma unroll
    for (int j = 0; j < kKeys / 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
    for (int kk2 = 0; kk2 < D / 32; ++kk2) {
#pragma unroll
      for (int j = 0; j < kKeys / 8; ++j) {
        uint32_t b[4];
        ldmatrix_x4(b, ks + (j * 8 + (lane & 7)) * S + kk2 * 32 + (lane >> 3) * 8);
        mma_bf16(s[j], qf[2 * kk2], b[0], b[1]);
        mma_bf16(s[j], qf[2 * kk2 + 1], b[2], b[3]);
      }
    }
    if (k0 + kKeys - 1 > min_pos || k0 + kKeys > k_end) {  // the diagonal or the range end: mask
#pragma unroll
      for (int j = 0; j < kKeys / 8; ++j) {
        const int key = k0 + j * 8 + t2;
        if (key > pos0 || key >= k_end) s[j][0] = -INFINITY;
        if (key + 1 > pos0 || key + 1 >= k_end) s[j][1] = -INFINITY;
        if (key > pos1 || key >= k_end) s[j][2] = -INFINITY;
        if (key + 1 > pos1 || key + 1 >= k_end) s[j][3] = -INFINITY;
      }
    }
    float mx0 = m0, mx1 = m1;
#pragma unroll
    for (int j = 0; j < kKeys / 8; ++j) {
      mx0 = fmaxf(mx0, fmaxf(s[j][0], s[j][1]));
      mx1 = fmaxf(mx1, fmaxf(s[j][2], s[j][3]));
    }
#pragma unroll
    for (int off = 1; off <= 2; off <<= 1) {  // the four lanes of a row
      mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, off));
      mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, off));
    }
    // A row with no visible key yet keeps max -inf: subtract 0 instead (its p and corr are 0).
    const float mu0 = mx0 == -INFINITY ? 0.f : mx0, mu1 = mx1 == -INFINITY ? 0.f : mx1;
    const float c0 = exp2f((m0 - mu0) * sl2), c1 = exp2f((m1 - mu1) * sl2);
    m0 = mx0, m1 = mx1;
    uint32_t pf[kKeys / 16][4];
    float rs0 = 0.f, rs1 = 0.f;
#pragma unroll
    for (int j = 0; j < kKeys / 8; ++j) {
      const float p0 = exp2f((s[j][0] - mu0) * sl2), p1 = exp2f((s[j][1] - mu0) * sl2);
      const float p2 = exp2f((s[j][2] - mu1) * sl2), p3 = exp2f((s[j][3] - mu1) * sl2);
      rs0 += p0 + p1;
      rs1 += p2 + p3;
      pf[j / 2][(j & 1) * 2] = pack_bf16x2(p0, p1);
      pf[j / 2][(j & 1) * 2 + 1] = pack_bf16x2(p2, p3);
    }
    l0 = l0 * c0 + rs0;
    l1 = l1 * c1 + rs1;
#pragma unroll
    for (int i = 0; i < D / 8; ++i) {
      o[i][0] *= c0, o[i][1] *= c0;
      o[i][2] *= c1, o[i][3] *= c1;
    }
#pragma unroll
    for (int kq = 0; kq < kKeys / 16; ++kq) {
#pragma unroll
      for (int d2 = 0; d2 < D / 16; ++d2) {
        uint32_t b[4];
        ldmatrix_x4_trans(b, vs + (kq * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * S + d2 * 16 + (lane >> 4) * 8);
        mma_bf16(o[2 * d2], pf[kq], b[0], b[1]);
        mma_bf16(o[2 * d2 + 1], pf[kq], b[2], b[3]);
      }
    }
    __syncthreads();  // tile t's stage is refilled by the next iteration's load
  }
  cp_async_wait<0>();

#pragma unroll
  for (int off = 1; off <= 2; off <<= 1) {
    l0 += __shfl_xor_sync(0xffffffffu, l0, off);
    l1 += __shfl_xor_sync(0xffffffffu, l1, off);
  }
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int r = half ? r1 : r0;
    if (r >= rows) continue;
    const float l = half ? l1 : l0, m = half ? m1 : m0;
    const float inv = l > 0.f ? 1.f / l : 0.f;
    const int tok = tok0 + r / group, head = kvh * group + r % group;
    if (a.num_splits == 1) {
      __nv_bfloat16* dst = a.out + (static_cast<int64_t>(tok) * a.n_heads + head) * D + t2;
#pragma unroll
      for (int i = 0; i < D / 8; ++i)
        *reinterpret_cast<__nv_bfloat162*>(dst + i * 8) =
            __floats2bfloat162_rn(o[i][2 * half] * inv, o[i][2 * half + 1] * inv);
    } else {
      const int64_t row = (static_cast<int64_t>(split) * a.num_tokens + tok) * a.n_heads + head;
      float* dst = a.partial_o + row * D + t2;
#pragma unroll
      for (int i = 0; i < D / 8; ++i)
        *reinterpret_cast<float2*>(dst + i * 8) = make_float2(o[i][2 * half] * inv, o[i][2 * half + 1] * inv);
      if ((lane & 3) == 0) {
        a.partial_ml[row * 2] = m * a.scale;  // natural-log units, as the merge expects
        a.partial_ml[row * 2 + 1] = l;
      }
    }
  }
}

// Block = (token, head), D threads: merges the splits' normalised partial outputs.
__global__ void split_reduce_kernel(AttentionArgs a) {
  pdl_wait();
  const int tok = blockIdx.x, head = blockIdx.y, d = threadIdx.x;
  const int D = a.head_dim;
  const int64_t stride = static_cast<int64_t>(a.num_tokens) * a.n_heads;
  const int64_t row0 = static_cast<int64_t>(tok) * a.n_heads + head;
  float m_max = -INFINITY;
  for (int s = 0; s < a.num_splits; ++s) m_max = fmaxf(m_max, a.partial_ml[(s * stride + row0) * 2]);
  float num = 0.f, den = 0.f;
  if (m_max != -INFINITY) {
    for (int s = 0; s < a.num_splits; ++s) {
      const int64_t row = s * stride + row0;
      const float ms = a.partial_ml[row * 2], ls = a.partial_ml[row * 2 + 1];
      if (ls <= 0.f) continue;
      const float w = expf(ms - m_max) * ls;
      num += w * a.partial_o[row * D + d];
      den += w;
    }
  }
  a.out[row0 * D + d] = __float2bfloat16_rn(den > 0.f ? num / den : 0.f);
}

template <int D>
void launch(const AttentionArgs& a, cudaStream_t stream) {
  static bool attr_set = false;  // raise the dynamic shared-memory limit once per instantiation
  if (!attr_set) {
    CUDA_CHECK(cudaFuncSetAttribute(attention_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(smem_bytes<D>())));
    attr_set = true;
  }
  launch_kernel(attention_kernel<D>, dim3(a.num_items, a.n_kv_heads, a.num_splits), dim3(kThreads), smem_bytes<D>(),
                stream, a);
}

}  // namespace

int attention_tokens_per_item(int n_heads, int n_kv_heads) {
  const int group = n_heads / n_kv_heads;
  return group >= kMaxRows ? 1 : kMaxRows / group;
}

void paged_attention(const AttentionArgs& a, cudaStream_t stream) {
  CUDA_SHAPE_CHECK(a.n_heads > 0 && a.n_kv_heads > 0 && a.n_heads % a.n_kv_heads == 0);
  CUDA_SHAPE_CHECK(a.n_heads / a.n_kv_heads <= kMaxRows);
  CUDA_SHAPE_CHECK(a.head_dim == 64 || a.head_dim == 128);
  CUDA_SHAPE_CHECK(a.block_size > 0 && a.max_blocks_per_seq > 0 && a.num_splits >= 1);
  CUDA_SHAPE_CHECK(a.num_splits == 1 || (a.partial_o && a.partial_ml));
  if (a.num_items == 0) return;
  if (a.head_dim == 64) {
    launch<64>(a, stream);
  } else {
    launch<128>(a, stream);
  }
  if (a.num_splits > 1)
    launch_kernel(split_reduce_kernel, dim3(a.num_tokens, a.n_heads), dim3(a.head_dim), 0, stream, a);
}

}  // namespace mpserve::backend::cuda
