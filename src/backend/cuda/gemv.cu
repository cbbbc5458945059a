// note: the dot products run on tensor cores (mma.sync m16n8k16, bf16 in, f32 accumulate) with
// the batch as the MMA's M side (rows 0..7 real, 8..15 zero) and eight weight rows as its N side.
// Lane (g, t) of a warp loads one 16-byte chunk (8 consecutive k) of weight row g and the same
// chunk of x row g; the MMA's logical k order is a permutation of the physical one that is the
// same for A and B (it depends only on t), so the dot products are exact sums over the chunk.
// One x load feeds all the weight rows of the tile: x costs rows / (8 * n_tiles) of the weight
// traffic, and rows 1..8 cost the same MMA work (the batch rows past `rows` are zeros).
//
// Work split: a tile (8 * n_tiles weight rows) belongs to one block; its warps split `in` in
// items of 4 * U chunks per lane row (U = 4 / n_tiles, so every item is four 16-byte weight loads
// per lane) and reduce through shared memory in a fixed order (deterministic; no atomics, one
// writer per output). Blocks loop over tiles; every warp loads its next item (possibly of the next
// tile) before it multiplies the current one, so loads stay in flight across tile boundaries.
//
// PDL: the first item's weights are loaded before pdl_wait() (no kernel writes weights), so the
// weight stream starts while the previous kernel drains; x, the residual and y are touched only
// after it.
//
// kQkvRope: the accumulator columns 2t, 2t+1 of a lane are one rotate-half pair thanks to the
// weight's RoPE pair layout (qkv_rope.cuh), so bias, RoPE and the q / KV-cache stores happen in
// the epilogue, in registers, and the qkv_rope kernel and the f32 qkv round trip disappear.
#include <algorithm>
#include <cmath>
#include <map>
#include <mutex>
#include <tuple>

#include "backend/cuda/cuda_check.cuh"
#include "backend/cuda/gemv.cuh"
#include "backend/cuda/linear_epilogue.cuh"
#include "backend/cuda/pdl.cuh"

namespace mpserve::backend::cuda {

int device_sms() {
  static int sms = 0;  // one device per process (the backend's)
  if (sms == 0) {
    int dev = 0;
    CUDA_CHECK(cudaGetDevice(&dev));
    CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  }
  return sms;
}

// Blocks of `kernel` resident per SM at (threads, smem); raises the kernel's dynamic shared
// memory limit first when needed. Cached: the decode path calls this on every launch.
int resident_blocks(const void* kernel, int threads, size_t smem) {
  static std::mutex mu;
  static std::map<std::tuple<const void*, int, size_t>, int> cache;
  static std::map<const void*, size_t> smem_limit;
  std::lock_guard<std::mutex> lock(mu);
  const auto key = std::make_tuple(kernel, threads, smem);
  if (auto it = cache.find(key); it != cache.end()) return it->second;
  size_t& limit = smem_limit[kernel];
  if (limit == 0) limit = 48 << 10;  // the default dynamic limit
  if (smem > limit) {
    CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    limit = smem;
  }
  int n = 0;
  CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, threads, smem));
  CUDA_SHAPE_CHECK(n > 0);  // the block does not fit on an SM
  cache.emplace(key, n);
  return n;
}

namespace {

constexpr int kMaxWarps = 16;
constexpr int kLoads = 4;  // 16-byte weight loads per lane per work item

// Weights: never written by a kernel, read once per step: the non-coherent path, no L1 line.
// note: volatile keeps the loads issued where written, i.e. the first ones before pdl_wait().
__device__ __forceinline__ uint4 ld_weight(const uint4* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
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

template <GemvOut OUT>
constexpr int outputs_per_tile(int n_tiles) {
  return OUT == GemvOut::kSwiGlu ? 4 * n_tiles : 8 * n_tiles;
}

// Dynamic shared memory: [x: rows * (in + 8) bf16, kRmsNorm only][reduction: 2 * warps * NT * 32 float2].
size_t smem_bytes(GemvIn in_mode, int rows, int in, int warps, int n_tiles) {
  const size_t xs = in_mode == GemvIn::kRmsNorm ? size_t(rows) * size_t(in + 8) * sizeof(__nv_bfloat16) : 0;
  return xs + size_t(2) * warps * n_tiles * 32 * sizeof(float2);
}

template <GemvIn IN, GemvOut OUT, int NT>
// note: two blocks per SM (at most 64 registers a thread) for one and two n-tiles: twice the weight
// loads in flight. Four n-tiles (5..8 rows) need ~72 and spill at 64, which measured slower.
__global__ void __launch_bounds__(kMaxWarps * 32, NT == 4 ? 1 : 2) gemv_kernel(GemvArgs a) {
  constexpr int U = kLoads / NT;
  constexpr bool kSwiGlu = OUT == GemvOut::kSwiGlu;
  constexpr int kOut = outputs_per_tile<OUT>(NT);
  // SwiGLU tiles pair gate and up rows: n-tiles j and j + NT/2, or, with one n-tile, its rows
  // 0..3 (gate) and 4..7 (up), i.e. lane columns 2t, 2t+1 of t < 2 (gate) and t + 2 (up).
  static_assert(!kSwiGlu || NT == 1 || NT % 2 == 0, "SwiGLU tiles pair gate and up n-tiles");
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ float ss_part[kGemvMaxRows][kMaxWarps];
  __shared__ float inv_s[kGemvMaxRows];

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int rows = a.rows, in = a.in, out = a.out;
  const int chunks = in >> 3;                    // 16-byte chunks per row
  const int kblocks = CEIL_DIV(chunks, 4 * U);   // items along `in`
  const int tiles = CEIL_DIV(out, kOut);
  // note: x rows in shared memory are padded by one chunk, so the 8 rows' chunks that the lanes
  // of a warp read together fall on different banks.
  const int xs_stride = in + 8;
  __nv_bfloat16* xs = reinterpret_cast<__nv_bfloat16*>(smem);
  float2* red = reinterpret_cast<float2*>(smem + (IN == GemvIn::kRmsNorm ? size_t(rows) * xs_stride * 2 : 0));

  // This lane's weight row of n-tile j of `tile`, clamped into the matrix (rows past `out` are
  // computed and dropped).
  auto w_row = [&](int tile, int j) {
    int r;
    if constexpr (kSwiGlu && NT == 1) {
      const int o = min(tile * kOut + (g & 3), out - 1);
      r = g < 4 ? o : out + o;
    } else if constexpr (kSwiGlu) {
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

  const int tile0 = blockIdx.x;  // grid <= tiles
  uint4 wc[U][NT], wn[U][NT];
  if (warp < kblocks) load_w(wc, tile0, warp);
  pdl_wait();  // x / the residual and y belong to earlier kernels
  // note: trigger only after the wait: triggering first let the next kernels launch (and, being
  // GEMVs, prefetch) in a cascade while the one before this was still running; on an H200 that
  // made 0.5B batch-1/8 decode 5-9% slower than no PDL at all.
  pdl_trigger();

  const __nv_bfloat16* xrow;  // x row g of this lane
  if constexpr (IN == GemvIn::kRmsNorm) {
    const float* res = static_cast<const float*>(a.x);
    const uint4* nw8 = reinterpret_cast<const uint4*>(a.norm_w);
    // bf16(v * inv * w) of one 16-byte chunk of x: residual values v0, v1, norm weights wv.
    auto norm_chunk = [](float4 v0, float4 v1, uint4 wv, float inv) {
      const float2 w0 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&wv.x));
      const float2 w1 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&wv.y));
      const float2 w2 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&wv.z));
      const float2 w3 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&wv.w));
      uint4 o;
      o.x = pack_bf16(v0.x * inv * w0.x, v0.y * inv * w0.y);
      o.y = pack_bf16(v0.z * inv * w1.x, v0.w * inv * w1.y);
      o.z = pack_bf16(v1.x * inv * w2.x, v1.y * inv * w2.y);
      o.w = pack_bf16(v1.z * inv * w3.x, v1.w * inv * w3.y);
      return o;
    };
    if (rows == 1 && chunks <= static_cast<int>(blockDim.x)) {
      // One row, at most one chunk per thread (every batch-1 shape): the residual is read once and
      // kept in registers through the reduction, and every thread sums the warps' partials itself
      // (same order everywhere): one barrier and one dependent read fewer than the general path.
      const int c = threadIdx.x;
      float4 v0 = make_float4(0.f, 0.f, 0.f, 0.f), v1 = v0;
      uint4 wv = make_uint4(0u, 0u, 0u, 0u);
      if (c < chunks) {
        const float4* src = reinterpret_cast<const float4*>(res) + 2 * c;
        v0 = src[0], v1 = src[1];
        wv = __ldg(nw8 + c);
      }
      float ss = v0.x * v0.x + v0.y * v0.y + v0.z * v0.z + v0.w * v0.w + v1.x * v1.x + v1.y * v1.y + v1.z * v1.z +
                 v1.w * v1.w;
      for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
      if (lane == 0) ss_part[0][warp] = ss;
      __syncthreads();
      float tot = 0.f;
      for (int p = 0; p < nw; ++p) tot += ss_part[0][p];
      if (c < chunks)
        *reinterpret_cast<uint4*>(xs + 8 * c) = norm_chunk(v0, v1, wv, rsqrtf(tot / static_cast<float>(in) + a.eps));
    } else {
      // Sum of squares: `per` warps per row, rows in rounds when there are more rows than warps.
      const int per = max(1, nw / rows);
      const int conc = nw / per;
      for (int r0 = 0; r0 < rows; r0 += conc) {
        const int r = r0 + warp / per, p = warp % per;
        if (warp < conc * per && r < rows) {
          const float4* row = reinterpret_cast<const float4*>(res + static_cast<int64_t>(r) * in);
          float ss = 0.f;
#pragma unroll 4
          for (int i = p * 32 + lane; i < in / 4; i += 32 * per) {
            const float4 v = row[i];
            ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
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
      for (int idx = threadIdx.x; idx < rows * chunks; idx += blockDim.x) {
        const int r = idx / chunks, c = idx - r * chunks;
        const float4* src = reinterpret_cast<const float4*>(res + static_cast<int64_t>(r) * in) + 2 * c;
        *reinterpret_cast<uint4*>(xs + r * xs_stride + 8 * c) = norm_chunk(src[0], src[1], __ldg(nw8 + c), inv_s[r]);
      }
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
      buf[u] = g < rows && c < chunks ? *reinterpret_cast<const uint4*>(xrow + 8 * c) : make_uint4(0u, 0u, 0u, 0u);
    }
  };

  // note: x is read right before its MMAs, from shared memory or from global memory (L1/L2: every
  // block reads all of it). Double-buffering global x like the weights cost 26-42 more registers
  // (106 at one n-tile): one 480-thread block per SM instead of two, and the o and down GEMVs
  // streamed at 2.1-3.1 TB/s where the two-block norm GEMVs reached 3.9-4.25 on an H200.
  int buf = 0;
  for (int tile = tile0; tile < tiles; tile += gridDim.x, buf ^= 1) {
    float acc[NT][4];
#pragma unroll
    for (int j = 0; j < NT; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
    for (int kb = warp; kb < kblocks; kb += nw) {
      int nkb = kb + nw, ntile = tile;
      if (nkb >= kblocks) nkb = warp, ntile += gridDim.x;
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
    __syncthreads();  // note: the next tile writes the other half of `red`, so one barrier per tile
    // Sum over the warps, in warp order, of lane l's pair of n-tile j.
    auto reduced = [&](int j, int l) {
      float2 s = rb[j * 32 + l];
      for (int w = 1; w < nw; ++w) {
        const float2 v = rb[(w * NT + j) * 32 + l];
        s.x += v.x, s.y += v.y;
      }
      return s;
    };
    if constexpr (kSwiGlu && NT == 1) {
      // One n-tile: lanes (r, t < 2) own gate columns 2t, 2t+1; the up pair is lane (r, t + 2).
      for (int e = threadIdx.x; e < 16; e += blockDim.x) {
        const int r = e >> 1, l = r * 4 + (e & 1);
        const int o = tile * kOut + 2 * (e & 1);
        if (r < rows && o < out) linear_store<OUT>(a, r, o, reduced(0, l), reduced(0, l + 2));
      }
    } else {
      constexpr int kEpi = kSwiGlu ? NT / 2 : NT;
      // note: a block may have fewer warps than epilogue n-tiles (a small `in`): loop.
      for (int e = threadIdx.x; e < kEpi * 32; e += blockDim.x) {
        const int j = e >> 5, l = e & 31, r = l >> 2;
        const int o = tile * kOut + j * 8 + 2 * (l & 3);
        if (r < rows && o < out) {  // out is even: o + 1 < out too
          const float2 up = kSwiGlu ? reduced(j + NT / 2, l) : make_float2(0.f, 0.f);
          linear_store<OUT>(a, r, o, reduced(j, l), up);
        }
      }
    }
  }
}

// The grid of plan `p` (grid 0: the tiles, capped at what stays resident at once).
template <GemvIn IN, GemvOut OUT, int NT>
int grid_for(const GemvArgs& a, const GemvPlan& p) {
  const size_t smem = smem_bytes(IN, a.rows, a.in, p.warps, NT);
  const int tiles = CEIL_DIV(a.out, outputs_per_tile<OUT>(NT));
  const int resident = resident_blocks(reinterpret_cast<const void*>(gemv_kernel<IN, OUT, NT>), p.warps * 32, smem);
  return std::min(tiles, p.grid > 0 ? p.grid : resident * device_sms());
}

template <GemvIn IN, GemvOut OUT, int NT>
void launch(const GemvArgs& a, const GemvPlan& p, cudaStream_t stream) {
  const size_t smem = smem_bytes(IN, a.rows, a.in, p.warps, NT);
  launch_kernel(gemv_kernel<IN, OUT, NT>, dim3(grid_for<IN, OUT, NT>(a, p)), dim3(p.warps * 32), smem, stream, a);
}

// Calls f.template operator()<IN, OUT, NT>() for the runtime modes and p.n_tiles.
template <typename F>
void dispatch(GemvIn in_mode, GemvOut out_mode, int n_tiles, F&& f) {
  auto tiles = [&]<GemvIn IN, GemvOut OUT>() {
    switch (n_tiles) {
      case 1: return f.template operator()<IN, OUT, 1>();
      case 2: return f.template operator()<IN, OUT, 2>();
      case 4: return f.template operator()<IN, OUT, 4>();
      default: break;
    }
    cuda_check_failed("gemv", __FILE__, __LINE__, "unsupported n_tiles for this epilogue");
  };
  // The combinations the backend uses.
  if (in_mode == GemvIn::kRmsNorm && out_mode == GemvOut::kF32)
    return tiles.template operator()<GemvIn::kRmsNorm, GemvOut::kF32>();
  if (in_mode == GemvIn::kRmsNorm && out_mode == GemvOut::kSwiGlu)
    return tiles.template operator()<GemvIn::kRmsNorm, GemvOut::kSwiGlu>();
  if (in_mode == GemvIn::kRmsNorm && out_mode == GemvOut::kQkvRope)
    return tiles.template operator()<GemvIn::kRmsNorm, GemvOut::kQkvRope>();
  if (in_mode == GemvIn::kBf16 && out_mode == GemvOut::kAddF32)
    return tiles.template operator()<GemvIn::kBf16, GemvOut::kAddF32>();
  if (in_mode == GemvIn::kBf16 && out_mode == GemvOut::kF32)
    return tiles.template operator()<GemvIn::kBf16, GemvOut::kF32>();
  cuda_check_failed("gemv", __FILE__, __LINE__, "unsupported prologue/epilogue combination");
}

}  // namespace

// note: the tile height trades x traffic (rows / (8 * n_tiles) of the weight bytes, from L1/L2 or
// shared memory) against spreading small matrices over every SM: prefer 4 n-tiles at 5..8 rows,
// 2 at 3..4, 1 at 1..2, and halve while there are fewer tiles than SMs. The warps of a block
// split `in` into equal shares of at most kMaxWarps warps (the 0.5B shapes get one item per warp:
// the whole matrix is requested before the kernel waits for its predecessor).
GemvPlan gemv_plan(const GemvArgs& a, GemvIn in_mode, GemvOut out_mode, int n_tiles, int warps) {
  const bool swiglu = out_mode == GemvOut::kSwiGlu;
  const int min_nt = swiglu ? 2 : 1;
  const int sms = device_sms();
  int nt = std::max(a.rows >= 5 ? 4 : a.rows >= 3 ? 2 : 1, min_nt);
  auto tiles = [&](int n) { return CEIL_DIV(a.out, swiglu ? 4 * n : 8 * n); };
  while (nt > min_nt && tiles(nt) < sms) nt /= 2;
  // note: gate/up at 1..2 rows of hidden 1536..2048 (1.5B, 3B) runs tiles of one n-tile (4 gate
  // + 4 up rows) in 8-warp blocks, four resident per SM: 4.6-6.5% shorter batch-1 steps than two
  // n-tiles in 16-warp blocks (H200, bench offline). Alone, one n-tile in 16-warp blocks was
  // slower (per-tile barrier and reduction twice as often); hidden 896 (0.5B) is best with two
  // n-tiles in 8-warp blocks, hidden 3584 (7B, 56 items along `in`) with 14 warps.
  const bool small_swiglu = swiglu && a.rows <= 2 && a.in <= 2048;
  if (small_swiglu && a.in >= 1536) nt = 1;
  if (n_tiles > 0) nt = n_tiles;
  const int u = kLoads / nt;
  const int kblocks = CEIL_DIV(a.in / 8, 4 * u);
  const int max_warps = small_swiglu ? 8 : kMaxWarps;
  GemvPlan p;
  p.n_tiles = nt;
  p.warps = warps > 0 ? warps : CEIL_DIV(kblocks, CEIL_DIV(kblocks, max_warps));
  // note: a long GEMV (the LM head: each resident block loops over dozens of tiles) is bound by
  // the warps resident per SM, 32 at 64 registers: blocks of 9..15 warps leave some of them out
  // (1.5B's 12-item rows: two blocks of 12 warps). 8-warp blocks, four per SM, took the 1.5B LM
  // head at one row from 138 to 119 us on an H200 (GemvBench lm_head_plan_sweep); 3B's 16 warps
  // already fill the SM, and 7B's 28 items measured best at 14.
  const bool long_gemv = tiles(nt) >= 16 * 2 * sms;
  if (warps <= 0 && long_gemv && kblocks <= 16 && p.warps > 8 && 32 % p.warps != 0) p.warps = 8;
  CUDA_SHAPE_CHECK(p.warps <= kMaxWarps);
  dispatch(in_mode, out_mode, p.n_tiles, [&]<GemvIn IN, GemvOut OUT, int NT>() { p.grid = grid_for<IN, OUT, NT>(a, p); });
  return p;
}

void check_linear_args(const GemvArgs& a, GemvIn in_mode, GemvOut out_mode, int max_rows) {
  CUDA_SHAPE_CHECK(a.rows >= 1 && a.rows <= max_rows);
  CUDA_SHAPE_CHECK(a.in > 0 && a.in % 8 == 0 && a.out > 0 && a.out % 2 == 0);
  CUDA_SHAPE_CHECK(a.x && a.w && (a.y || out_mode == GemvOut::kQkvRope) && (in_mode != GemvIn::kRmsNorm || a.norm_w));
  if (out_mode == GemvOut::kQkvRope) {
    const QkvRopeArgs& r = a.rope;
    CUDA_SHAPE_CHECK(r.head_dim == 64 || r.head_dim == 128);
    CUDA_SHAPE_CHECK(r.n_heads > 0 && r.n_kv_heads > 0 && r.n_heads % r.n_kv_heads == 0);
    CUDA_SHAPE_CHECK(a.out == (r.n_heads + 2 * r.n_kv_heads) * r.head_dim && r.num_tokens == a.rows);
    CUDA_SHAPE_CHECK(r.block_size > 0 && r.q_out && r.k_cache && r.v_cache && r.inv_freq && r.positions &&
                     r.slot_mapping);
    CUDA_SHAPE_CHECK(!r.q_norm && !r.k_norm);  // a head-wide norm: GemvOut::kF32 + qkv_rope_cache_write
  }
}

void gemv(const GemvArgs& a, GemvIn in_mode, GemvOut out_mode, cudaStream_t stream, const GemvPlan* plan) {
  check_linear_args(a, in_mode, out_mode, kGemvMaxRows);
  GemvPlan p = plan ? *plan : gemv_plan(a, in_mode, out_mode);
  CUDA_SHAPE_CHECK(p.warps >= 1 && p.warps <= kMaxWarps);
  CUDA_SHAPE_CHECK(smem_bytes(in_mode, a.rows, a.in, p.warps, p.n_tiles) <= (220u << 10));
  dispatch(in_mode, out_mode, p.n_tiles, [&]<GemvIn IN, GemvOut OUT, int NT>() { launch<IN, OUT, NT>(a, p, stream); });
}

}  // namespace mpserve::backend::cuda
