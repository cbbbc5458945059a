// The device side of the small-batch GEMV (gemv.cuh), shared by its own kernel (gemv.cu) and the
// persistent decode-layer kernel (decode_layer.cu).
//
// note: the dot products run on tensor cores (mma.sync m16n8k16, bf16 in, f32 accumulate) with
// the batch as the MMA's M side (rows 0..7 real, 8..15 zero) and eight weight rows as its N side.
// Lane (g, t) of a warp loads one 16-byte chunk (8 consecutive k) of weight row g and the same
// chunk of x row g; the MMA's logical k order is a permutation of the physical one that is the
// same for A and B (it depends only on t), so the dot products are exact sums over the chunk.
// One x load feeds all the weight rows of the tile: x costs rows / (8 * n_tiles) of the weight
// traffic, and rows 1..8 cost the same MMA work (the batch rows past `rows` are zeros).
//
// Work split: a tile (8 * n_tiles weight rows) belongs to one group of warps (GemvGroup: the
// whole block in the GEMV's own kernel; a slice of the block in the persistent kernel); its warps
// split `in` in items of 4 * U chunks per lane row (U = 4 / n_tiles, so every item is four
// 16-byte weight loads per lane) and reduce through shared memory in a fixed order
// (deterministic; no atomics, one writer per output). Groups loop over tiles; every warp loads
// its next item (possibly of the next tile) before it multiplies the current one, so loads stay
// in flight across tile boundaries.
//
// Dependencies: the first item's weights are loaded before the caller's `wait` runs (no kernel
// writes weights), so the weight stream starts while the work before it drains (the previous
// kernel under PDL, or the other blocks of a grid barrier); x, the residual and y are touched only
// after it.
//
// kQkvRope: the accumulator columns 2t, 2t+1 of a lane are one rotate-half pair thanks to the
// weight's RoPE pair layout (qkv_rope.cuh), so bias, RoPE and the q / KV-cache stores happen in
// the epilogue, in registers, and the qkv_rope kernel and the f32 qkv round trip disappear.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "backend/cuda/cuda_check.cuh"
#include "backend/cuda/gemv.cuh"

namespace mpserve::backend::cuda::gemv_detail {

constexpr int kMaxWarps = 16;
constexpr int kLoads = 4;  // 16-byte weight loads per lane per work item

// Weights: never written by a kernel, read once per step: the non-coherent path, no L1 line.
// note: volatile keeps the loads issued where written, i.e. the first ones before the wait.
__device__ __forceinline__ uint4 ld_weight(const uint4* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

// The f32 residual (the kRmsNorm input, the kAddF32 output's old value). kL2: bypass L1
// (ld.global.cg). A kernel launch starts with clean L1s, so the GEMV's own kernel may cache; the
// persistent kernel reads the residual again after other blocks rewrote it behind a grid
// barrier, and a line this SM cached before would hide that. (bf16 x is written once per launch
// before its only reads, so it never has a stale line and keeps the L1.)
template <bool kL2, typename T>
__device__ __forceinline__ T ld_residual(const T* p) {
  if constexpr (kL2) {
    return __ldcg(p);
  } else {
    return *p;
  }
}

// d (16x8 f32) += A (16x16 bf16) . B (16x8 bf16) with A rows 8..15 zero: a0/a2 are this lane's
// A registers of row g, b0/b1 its B registers (column g).
__device__ __forceinline__ void mma_rows8(float (&d)[4], uint32_t a0, uint32_t a2, uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(0u), "r"(a2), "r"(0u), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

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

template <GemvOut OUT>
__host__ __device__ constexpr int outputs_per_tile(int n_tiles) {
  return OUT == GemvOut::kSwiGlu ? 4 * n_tiles : 8 * n_tiles;
}

// Items along `in` (the unit the warps of a group split) for n_tiles.
__host__ __device__ constexpr int k_items(int in, int n_tiles) { return CEIL_DIV(in / 8, 4 * (kLoads / n_tiles)); }

// Dynamic shared memory: [x: rows * (in + 8) bf16, kRmsNorm only][reduction: 2 * warps * NT * 32
// float2], `warps` being the block's warps (every group of the block has its share).
inline size_t smem_bytes(GemvIn in_mode, int rows, int in, int warps, int n_tiles) {
  const size_t xs = in_mode == GemvIn::kRmsNorm ? size_t(rows) * size_t(in + 8) * sizeof(__nv_bfloat16) : 0;
  return xs + size_t(2) * warps * n_tiles * 32 * sizeof(float2);
}

// Host side (gemv.cu).
int device_sms();  // of the current device, read once
// Blocks of `kernel` resident per SM at (threads, smem); raises the kernel's dynamic shared memory
// limit first when needed. Cached.
int resident_blocks(const void* kernel, int threads, size_t smem);
// gemv()'s checks of a launch's arguments (CUDA_SHAPE_CHECK).
void check_args(const GemvArgs& a, GemvIn in_mode, GemvOut out_mode);

// A group of consecutive warps of a block that works on one tile at a time.
struct GemvGroup {
  int id;     // among all groups of the grid: the first tile, then the stride below
  int count;  // groups in the grid
  int warp;   // warp within the group
  int warps;  // warps in the group
  int local;  // group within the block: its share of the reduction buffer, its named barrier
};

// The group's whole-block form (the GEMV's own kernel).
__device__ __forceinline__ GemvGroup block_group() {
  return GemvGroup{static_cast<int>(blockIdx.x), static_cast<int>(gridDim.x), static_cast<int>(threadIdx.x >> 5),
                   static_cast<int>(blockDim.x >> 5), 0};
}

// The block as groups of `warps` warps (a divisor of the block's warps); named barrier 1 + local
// per group (barrier 0 is __syncthreads), so warps <= 1 or >= 2 * 15 / 16 of a 16-warp block.
__device__ __forceinline__ GemvGroup split_block(int warps) {
  const int w = threadIdx.x >> 5, per_block = (blockDim.x >> 5) / warps;
  return GemvGroup{static_cast<int>(blockIdx.x) * per_block + w / warps, static_cast<int>(gridDim.x) * per_block,
                   w % warps, warps, w / warps};
}

__device__ __forceinline__ void group_sync(const GemvGroup& v) {
  if (v.warps == static_cast<int>(blockDim.x >> 5)) {
    __syncthreads();
  } else if (v.warps == 1) {
    __syncwarp();
  } else {
    asm volatile("bar.sync %0, %1;" ::"r"(1 + v.local), "r"(v.warps * 32) : "memory");
  }
}

// One GEMV over every tile of `a` for the group `v`. Every thread of the block calls it (the
// kRmsNorm prologue is block-wide); `wait()` runs once, after the first weight loads and before
// anything an earlier kernel or phase wrote is read. smem: smem_bytes(IN, rows, in, block warps, NT).
// kLd: 16-byte weight loads per lane per item (kLoads in the GEMV's own kernel; items along `in`
// are then 4 * kLd / NT chunks: k_items(in, NT * kLoads / kLd)).
template <GemvIn IN, GemvOut OUT, int NT, bool kL2, int kLd = kLoads, typename Wait>
__device__ __forceinline__ void gemv_body(const GemvArgs& a, const GemvGroup& v, unsigned char* smem, Wait&& wait) {
  constexpr int U = kLd / NT;
  static_assert(U >= 1 && U * NT == kLd);
  constexpr bool kSwiGlu = OUT == GemvOut::kSwiGlu;
  constexpr int kOut = outputs_per_tile<OUT>(NT);
  static_assert(!kSwiGlu || NT % 2 == 0, "SwiGLU tiles pair gate and up n-tiles");
  __shared__ float ss_part[kGemvMaxRows][kMaxWarps];
  __shared__ float inv_s[kGemvMaxRows];

  const int lane = threadIdx.x & 31, warp = v.warp, nw = v.warps;
  const int g = lane >> 2, t = lane & 3;
  const int rows = a.rows, in = a.in, out = a.out;
  const int chunks = in >> 3;                    // 16-byte chunks per row
  const int kblocks = CEIL_DIV(chunks, 4 * U);   // items along `in`
  const int tiles = CEIL_DIV(out, kOut);
  // note: x rows in shared memory are padded by one chunk, so the 8 rows' chunks that the lanes
  // of a warp read together fall on different banks.
  const int xs_stride = in + 8;
  __nv_bfloat16* xs = reinterpret_cast<__nv_bfloat16*>(smem);
  float2* red = reinterpret_cast<float2*>(smem + (IN == GemvIn::kRmsNorm ? size_t(rows) * xs_stride * 2 : 0)) +
                v.local * 2 * nw * NT * 32;

  // This lane's weight row of n-tile j of `tile`, clamped into the matrix (rows past `out` are
  // computed and dropped).
  auto w_row = [&](int tile, int j) {
    int r;
    if constexpr (kSwiGlu) {
      const int o = min(tile * kOut + (j % (NT / 2)) * 8 + g, out - 1);
      r = j < NT / 2 ? o : out + o;
    } else {
      r = min(tile * kOut + j * 8 + g, out - 1);
    }
    return reinterpret_cast<const uint4*>(a.w + static_cast<int64_t>(r) * in);
  };
  auto load_w = [&](uint4(&buf)[U][NT], int tile, int kb) {
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      const uint4* row = w_row(tile, j);
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int c = (kb * U + u) * 4 + t;
        buf[u][j] = c < chunks ? ld_weight(row + c) : make_uint4(0u, 0u, 0u, 0u);
      }
    }
  };

  const int tile0 = v.id;
  uint4 wc[U][NT], wn[U][NT];
  if (warp < kblocks && tile0 < tiles) load_w(wc, tile0, warp);
  wait();

  const __nv_bfloat16* xrow;  // x row g of this lane
  if constexpr (IN == GemvIn::kRmsNorm) {
    const float* res = static_cast<const float*>(a.x);
    const int bw = blockDim.x >> 5, bwarp = threadIdx.x >> 5;
    // Sum of squares: `per` warps per row, rows in rounds when there are more rows than warps.
    const int per = max(1, bw / rows);
    const int conc = bw / per;
    for (int r0 = 0; r0 < rows; r0 += conc) {
      const int r = r0 + bwarp / per, p = bwarp % per;
      if (bwarp < conc * per && r < rows) {
        const float4* row = reinterpret_cast<const float4*>(res + static_cast<int64_t>(r) * in);
        float ss = 0.f;
#pragma unroll 4
        for (int i = p * 32 + lane; i < in / 4; i += 32 * per) {
          const float4 x = ld_residual<kL2>(row + i);
          ss += x.x * x.x + x.y * x.y + x.z * x.z + x.w * x.w;
        }
        for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
        if (lane == 0) ss_part[r][p] = ss;
      }
    }
    __syncthreads();
    if (static_cast<int>(threadIdx.x) < rows) {
      float ss = 0.f;
      for (int p = 0; p < per; ++p) ss += ss_part[threadIdx.x][p];
      inv_s[threadIdx.x] = rsqrtf(ss / static_cast<float>(in) + a.eps);
    }
    __syncthreads();
    const uint4* nw8 = reinterpret_cast<const uint4*>(a.norm_w);
    for (int idx = threadIdx.x; idx < rows * chunks; idx += blockDim.x) {
      const int r = idx / chunks, c = idx - r * chunks;
      const float4* src = reinterpret_cast<const float4*>(res + static_cast<int64_t>(r) * in) + 2 * c;
      const float4 v0 = ld_residual<kL2>(src), v1 = ld_residual<kL2>(src + 1);
      const uint4 wv = __ldg(nw8 + c);
      const float inv = inv_s[r];
      const float2 w0 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&wv.x));
      const float2 w1 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&wv.y));
      const float2 w2 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&wv.z));
      const float2 w3 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&wv.w));
      uint4 o;
      o.x = pack_bf16(v0.x * inv * w0.x, v0.y * inv * w0.y);
      o.y = pack_bf16(v0.z * inv * w1.x, v0.w * inv * w1.y);
      o.z = pack_bf16(v1.x * inv * w2.x, v1.y * inv * w2.y);
      o.w = pack_bf16(v1.z * inv * w3.x, v1.w * inv * w3.y);
      *reinterpret_cast<uint4*>(xs + r * xs_stride + 8 * c) = o;
    }
    __syncthreads();
    xrow = xs + g * xs_stride;
  } else {
    xrow = static_cast<const __nv_bfloat16*>(a.x) + static_cast<int64_t>(g) * in;
  }
  auto load_x = [&](uint4(&buf)[U], int kb) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int c = (kb * U + u) * 4 + t;
      const uint4* p = reinterpret_cast<const uint4*>(xrow + 8 * c);
      buf[u] = g < rows && c < chunks ? *p : make_uint4(0u, 0u, 0u, 0u);
    }
  };

  // note: x is read right before its MMAs, from shared memory or from global memory (L1/L2: every
  // block reads all of it). Double-buffering global x like the weights cost 26-42 more registers
  // (106 at one n-tile): one 480-thread block per SM instead of two, and the o and down GEMVs
  // streamed at 2.1-3.1 TB/s where the two-block norm GEMVs reached 3.9-4.25 on an H200.
  int buf = 0;
  for (int tile = tile0; tile < tiles; tile += v.count, buf ^= 1) {
    float acc[NT][4];
#pragma unroll
    for (int j = 0; j < NT; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
    for (int kb = warp; kb < kblocks; kb += nw) {
      int nkb = kb + nw, ntile = tile;
      if (nkb >= kblocks) nkb = warp, ntile += v.count;
      const bool more = ntile < tiles;
      if (more) load_w(wn, ntile, nkb);
      uint4 xc[U];
      load_x(xc, kb);
#pragma unroll
      for (int u = 0; u < U; ++u) {
#pragma unroll
        for (int j = 0; j < NT; ++j) {
          mma_rows8(acc[j], xc[u].x, xc[u].y, wc[u][j].x, wc[u][j].y);
          mma_rows8(acc[j], xc[u].z, xc[u].w, wc[u][j].z, wc[u][j].w);
        }
      }
      if (more) {
#pragma unroll
        for (int u = 0; u < U; ++u) {
#pragma unroll
          for (int j = 0; j < NT; ++j) wc[u][j] = wn[u][j];
        }
      }
    }
    // acc[j][0..1]: batch row g, outputs 2t, 2t+1 of n-tile j (acc[j][2..3]: the zero rows).
    float2* rb = red + buf * nw * NT * 32;
#pragma unroll
    for (int j = 0; j < NT; ++j) rb[(warp * NT + j) * 32 + lane] = make_float2(acc[j][0], acc[j][1]);
    group_sync(v);  // note: the next tile writes the other half of `red`, so one barrier per tile
    constexpr int kEpi = kSwiGlu ? NT / 2 : NT;
    // note: a group may have fewer warps than epilogue n-tiles (a small `in`): loop.
    for (int e = warp * 32 + lane; e < kEpi * 32; e += nw * 32) {
      const int j = e >> 5, l = e & 31, r = l >> 2;
      const int o = tile * kOut + j * 8 + 2 * (l & 3);
      if (r < rows && o < out) {  // out is even: o + 1 < out too
        float2 s = rb[j * 32 + l];
        for (int w = 1; w < nw; ++w) {
          const float2 x = rb[(w * NT + j) * 32 + l];
          s.x += x.x, s.y += x.y;
        }
        [[maybe_unused]] const int64_t yo = static_cast<int64_t>(r) * out + o;
        if constexpr (OUT == GemvOut::kF32) {
          *reinterpret_cast<float2*>(static_cast<float*>(a.y) + yo) = s;
        } else if constexpr (OUT == GemvOut::kBf16) {
          *reinterpret_cast<__nv_bfloat162*>(static_cast<__nv_bfloat16*>(a.y) + yo) = __floats2bfloat162_rn(s.x, s.y);
        } else if constexpr (OUT == GemvOut::kAddF32) {
          float2* y = reinterpret_cast<float2*>(static_cast<float*>(a.y) + yo);
          float2 x = ld_residual<kL2>(y);
          x.x += s.x, x.y += s.y;
          *y = x;
        } else if constexpr (OUT == GemvOut::kQkvRope) {
          qkv_rope_store(a.rope, r, o, s);
        } else {
          float2 up = rb[(j + NT / 2) * 32 + l];
          for (int w = 1; w < nw; ++w) {
            const float2 x = rb[(w * NT + j + NT / 2) * 32 + l];
            up.x += x.x, up.y += x.y;
          }
          *reinterpret_cast<__nv_bfloat162*>(static_cast<__nv_bfloat16*>(a.y) + yo) =
              __floats2bfloat162_rn(s.x / (1.f + expf(-s.x)) * up.x, s.y / (1.f + expf(-s.y)) * up.y);
        }
      }
    }
  }
}

}  // namespace mpserve::backend::cuda::gemv_detail
