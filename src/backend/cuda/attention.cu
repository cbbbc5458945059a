#include <cmath>

#include "backend/cuda/attention.cuh"
#include "backend/cuda/cuda_check.cuh"

namespace mpserve::backend::cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kMaxRows = 64;  // query rows (token, head) per block
constexpr int kRowsPerWarp = kMaxRows / kWarps;
constexpr int kTile = 32;     // keys per shared-memory tile: one key per lane

template <int D>
constexpr size_t smem_bytes() {
  // q rows f32 | K tile bf16 with one padding pair per row | V tile bf16 | query positions
  return sizeof(float) * kMaxRows * D + sizeof(__nv_bfloat16) * kTile * (D + 2) + sizeof(__nv_bfloat16) * kTile * D +
         sizeof(int) * kMaxRows;
}

// Block = (work item, kv head, split). Rows r = (token r / G, q head kvh*G + r % G); warp w owns
// rows w, w + 8, ... . Per key tile: lane j scores key j for a row, an online-softmax update
// follows, then every lane accumulates its D/32 output columns over the tile's 32 keys.
template <int D>
__global__ void __launch_bounds__(kThreads) attention_kernel(AttentionArgs a) {
  constexpr int kPer = D / 32;
  constexpr int kKStride = D / 2 + 1;  // words per padded K row: lanes hit distinct banks
  extern __shared__ __align__(16) unsigned char smem[];
  float* q_s = reinterpret_cast<float*>(smem);                                    // [kMaxRows][D]
  __nv_bfloat162* k_s = reinterpret_cast<__nv_bfloat162*>(q_s + kMaxRows * D);     // [kTile][kKStride]
  __nv_bfloat16* v_s = reinterpret_cast<__nv_bfloat16*>(k_s + kTile * kKStride);  // [kTile][D]
  int* qpos_s = reinterpret_cast<int*>(v_s + kTile * D);                          // [kMaxRows]

  const int4 item = reinterpret_cast<const int4*>(a.items)[blockIdx.x];
  const int seq = item.x, tok0 = item.y, ntok = item.z;
  const int kvh = blockIdx.y;
  const int split = blockIdx.z;
  const int group = a.n_heads / a.n_kv_heads;
  const int rows = ntok * group;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;

  for (int idx = threadIdx.x; idx < rows * (D / 2); idx += kThreads) {
    const int r = idx / (D / 2), c = idx % (D / 2);
    const int tok = tok0 + r / group, head = kvh * group + r % group;
    const __nv_bfloat162 v =
        reinterpret_cast<const __nv_bfloat162*>(a.q + (static_cast<int64_t>(tok) * a.n_heads + head) * D)[c];
    reinterpret_cast<float2*>(q_s + r * D)[c] = __bfloat1622float2(v);
  }
  for (int r = threadIdx.x; r < rows; r += kThreads) qpos_s[r] = a.positions[tok0 + r / group];

  const int kv_len = a.positions[tok0 + ntok - 1] + 1;
  const int chunk = CEIL_DIV(CEIL_DIV(kv_len, a.num_splits), kTile) * kTile;
  const int k_begin = split * chunk;
  const int k_end = min(kv_len, k_begin + chunk);
  const int32_t* table = a.block_tables + static_cast<int64_t>(seq) * a.max_blocks_per_seq;

  float m[kRowsPerWarp], l[kRowsPerWarp], acc[kRowsPerWarp][kPer];
#pragma unroll
  for (int i = 0; i < kRowsPerWarp; ++i) {
    m[i] = -INFINITY;
    l[i] = 0.f;
#pragma unroll
    for (int c = 0; c < kPer; ++c) acc[i][c] = 0.f;
  }

  for (int k0 = k_begin; k0 < k_end; k0 += kTile) {
    __syncthreads();  // previous tile consumed (and, first time, q_s written)
    for (int v = threadIdx.x; v < kTile * (D / 8); v += kThreads) {
      const int j = v / (D / 8), c = v % (D / 8);
      const int key = k0 + j;
      uint4 kv = make_uint4(0, 0, 0, 0), vv = make_uint4(0, 0, 0, 0);
      if (key < k_end) {
        const int64_t blk = table[key / a.block_size];
        const int off = key % a.block_size;
        const int64_t src = ((blk * a.n_kv_heads + kvh) * a.block_size + off) * D + c * 8;
        kv = *reinterpret_cast<const uint4*>(a.k_cache + src);
        vv = *reinterpret_cast<const uint4*>(a.v_cache + src);
      }
      unsigned* kd = reinterpret_cast<unsigned*>(k_s + j * kKStride + c * 4);
      kd[0] = kv.x, kd[1] = kv.y, kd[2] = kv.z, kd[3] = kv.w;
      *reinterpret_cast<uint4*>(v_s + j * D + c * 8) = vv;
    }
    __syncthreads();
    const int key = k0 + lane;
#pragma unroll
    for (int i = 0; i < kRowsPerWarp; ++i) {
      const int r = warp + kWarps * i;
      if (r >= rows) continue;  // warp-uniform
      const bool valid = key < k_end && key <= qpos_s[r];
      const float2* qr = reinterpret_cast<const float2*>(q_s + r * D);
      const __nv_bfloat162* kr = k_s + lane * kKStride;
      float s = 0.f;
#pragma unroll 8
      for (int d = 0; d < D / 2; ++d) {
        const float2 qq = qr[d];
        const float2 kk = __bfloat1622float2(kr[d]);
        s = fmaf(qq.x, kk.x, s);
        s = fmaf(qq.y, kk.y, s);
      }
      s = valid ? s * a.scale : -INFINITY;
      float tmax = s;
      for (int o = 16; o > 0; o >>= 1) tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, o));
      const float m_new = fmaxf(m[i], tmax);
      if (m_new == -INFINITY) continue;  // every key of the tile masked for this row
      const float p = valid ? expf(s - m_new) : 0.f;
      const float corr = expf(m[i] - m_new);
      float psum = p;
      for (int o = 16; o > 0; o >>= 1) psum += __shfl_xor_sync(0xffffffffu, psum, o);
      l[i] = l[i] * corr + psum;
      m[i] = m_new;
#pragma unroll
      for (int c = 0; c < kPer; ++c) acc[i][c] *= corr;
#pragma unroll 4
      for (int j = 0; j < kTile; ++j) {
        const float pj = __shfl_sync(0xffffffffu, p, j);
#pragma unroll
        for (int c = 0; c < kPer; ++c) acc[i][c] = fmaf(pj, __bfloat162float(v_s[j * D + lane + 32 * c]), acc[i][c]);
      }
    }
  }

#pragma unroll
  for (int i = 0; i < kRowsPerWarp; ++i) {
    const int r = warp + kWarps * i;
    if (r >= rows) continue;
    const int tok = tok0 + r / group, head = kvh * group + r % group;
    const float inv = l[i] > 0.f ? 1.f / l[i] : 0.f;
    if (a.num_splits == 1) {
      __nv_bfloat16* dst = a.out + (static_cast<int64_t>(tok) * a.n_heads + head) * D;
#pragma unroll
      for (int c = 0; c < kPer; ++c) dst[lane + 32 * c] = __float2bfloat16_rn(acc[i][c] * inv);
    } else {
      const int64_t row = (static_cast<int64_t>(split) * a.num_tokens + tok) * a.n_heads + head;
      float* dst = a.partial_o + row * D;
#pragma unroll
      for (int c = 0; c < kPer; ++c) dst[lane + 32 * c] = acc[i][c] * inv;
      if (lane == 0) {
        a.partial_ml[row * 2] = m[i];
        a.partial_ml[row * 2 + 1] = l[i];
      }
    }
  }
}

// Block = (token, head), D threads: merges the splits' normalised partial outputs.
__global__ void split_reduce_kernel(AttentionArgs a) {
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
  const dim3 grid(a.num_items, a.n_kv_heads, a.num_splits);
  attention_kernel<D><<<grid, kThreads, smem_bytes<D>(), stream>>>(a);
  CUDA_CHECK_LAUNCH();
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
  if (a.num_splits > 1) {
    split_reduce_kernel<<<dim3(a.num_tokens, a.n_heads), a.head_dim, 0, stream>>>(a);
    CUDA_CHECK_LAUNCH();
  }
}

}  // namespace mpserve::backend::cuda
