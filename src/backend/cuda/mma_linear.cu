// note: layout of the work. Tile t covers BN weight rows (kSwiGlu: BN/2 gate rows and the same
// BN/2 up rows, so a tile holds both halves of its outputs) and all (<= 64) batch rows. The
// `split` blocks of a tile are one cluster; block `rank` takes an equal run of the 64-wide steps
// along `in`. A step stages x (rows padded to 16 x 64, zero past `rows`) and W (BN x 64) in shared
// memory with cp.async, kStages deep; 8 warps: each owns BN/4 columns, all rows and every other
// 16-wide k of a step (two warp groups, added before the cluster reduction): per 16-wide k, MT
// ldmatrix.x4 of x (the MMA's A, batch rows as M) and BN/64 ldmatrix.x4 of W (B, weight rows as
// N), then MT * BN/32 mma.sync m16n8k16. Shared rows are 128 bytes with the 16-byte chunk c of
// row r stored at chunk c ^ (r % 8), so the 8 row addresses of every ldmatrix phase hit distinct
// banks.
//
// After the last step each block writes its partial tile (f32) to its own shared memory; after a
// cluster barrier, block `rank` reduces its share of the tile's (row, 4 columns) items by
// loading the peers' partials (distributed shared memory; all loads of an item in flight at
// once) and adding them in rank order, and runs the epilogue
// (linear_epilogue.cuh) on them; a second barrier keeps every block's shared memory alive until
// its peers have read it.
//
// PDL: the first kStages - 1 weight stages are requested before pdl_wait() (no kernel writes
// weights); x (written by the kernel before) only after it.
#include <algorithm>

#include <cooperative_groups.h>

#include "backend/cuda/cuda_check.cuh"
#include "backend/cuda/linear_epilogue.cuh"
#include "backend/cuda/mma.cuh"
#include "backend/cuda/mma_linear.cuh"
#include "backend/cuda/pdl.cuh"
#include "backend/cuda/rms_norm.cuh"

namespace mpserve::backend::cuda {
namespace {

namespace cg = cooperative_groups;

constexpr int kBK = 64;  // `in` per step: one 128-byte shared row
constexpr int kThreads = 256;
// note: 4 stages, two blocks per SM at 64 rows. Measured on an H200 (docs/results/cuda_backend.md,
// seventh session): 2, 3 and 8 stages were slower or equal in steps at 32 and 64 rows.
constexpr int kStages = 4;  // 8 warps: 4 column quarters x 2 halves of each 32-wide k
constexpr int kMaxSplit = 8;  // the portable cluster size

template <int MT, int BN>
constexpr int stage_bytes() {
  return (MT * 16 + BN) * kBK * 2;
}
template <int BN>
constexpr int red_stride() {  // floats per row of the partial tile
  return BN + 8;
}
template <int MT, int BN>
constexpr size_t smem_bytes() {
  return size_t(kStages) * stage_bytes<MT, BN>();
}

// Byte offset of 16-byte chunk c of shared row r (swizzled).
__device__ __forceinline__ int swz(int r, int c) { return r * 128 + ((c ^ (r & 7)) << 4); }

template <int MT, int BN, GemvOut OUT>
__global__ void __launch_bounds__(kThreads) mma_linear_kernel(GemvArgs a, int split) {
  constexpr bool kSwiGlu = OUT == GemvOut::kSwiGlu;
  constexpr int kXRows = MT * 16;
  constexpr int kXBytes = kXRows * 128;
  constexpr int kWarpN = BN / 4;  // columns per warp
  constexpr int kN8 = kWarpN / 8;
  constexpr int kLoadRows = kThreads / 8;  // rows one pass of 16-byte copies covers
  extern __shared__ __align__(128) unsigned char smem[];

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wn = warp & 3, kg = warp >> 2;  // column quarter, half of each step's 16-wide k
  const int g = lane >> 2, t = lane & 3;
  const int rank = static_cast<int>(blockIdx.x) % split, tile = static_cast<int>(blockIdx.x) / split;
  const int rows = a.rows, in = a.in, out = a.out;
  const int chunks = in >> 3;
  const int steps = CEIL_DIV(in, kBK);
  const int s0 = rank * steps / split, n_steps = (rank + 1) * steps / split - s0;

  // This thread's copies per stage: chunk column c of W rows lr + kLoadRows j and of x rows likewise.
  const int c = tid & 7, lr = tid >> 3;
  const __nv_bfloat16* wrow[BN / kLoadRows];
#pragma unroll
  for (int j = 0; j < BN / kLoadRows; ++j) {
    const int n = lr + kLoadRows * j;
    int r;
    if constexpr (kSwiGlu) {
      const int o = min(tile * (BN / 2) + n % (BN / 2), out - 1);  // past `out`: computed, dropped
      r = n < BN / 2 ? o : out + o;
    } else {
      r = min(tile * BN + n, out - 1);
    }
    wrow[j] = a.w + static_cast<int64_t>(r) * in;
  }
  const __nv_bfloat16* x = static_cast<const __nv_bfloat16*>(a.x);
  auto load_w = [&](int slot, int step) {
    unsigned char* ws = smem + slot * stage_bytes<MT, BN>() + kXBytes;
    const int kc = step * (kBK / 8) + c;
    const bool ok = kc < chunks;
#pragma unroll
    for (int j = 0; j < BN / kLoadRows; ++j) cp_async16(ws + swz(lr + kLoadRows * j, c), wrow[j] + 8 * kc, ok);
  };
  auto load_x = [&](int slot, int step) {
    unsigned char* xs = smem + slot * stage_bytes<MT, BN>();
    const int kc = step * (kBK / 8) + c;
#pragma unroll
    for (int j = 0; j < CEIL_DIV(kXRows, kLoadRows); ++j) {
      const int m = lr + kLoadRows * j;
      if (m >= kXRows) break;
      const bool ok = m < rows && kc < chunks;
      cp_async16(xs + swz(m, c), ok ? x + static_cast<int64_t>(m) * in + 8 * kc : x, ok);
    }
  };

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s)
    if (s < n_steps) load_w(s, s0 + s);
  pdl_wait();  // x and y belong to earlier kernels
  pdl_trigger();
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < n_steps) load_x(s, s0 + s);
    cp_async_commit();  // group 0 also holds the weight stages above
  }

  float acc[MT][kN8][4];
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int j = 0; j < kN8; ++j) acc[m][j][0] = acc[m][j][1] = acc[m][j][2] = acc[m][j][3] = 0.f;

  for (int i = 0; i < n_steps; ++i) {
    cp_async_wait<kStages - 2>();  // step i's group has landed (for this thread) ...
    __syncthreads();               // ... for every thread, and step i - 1's slot is free
    const int next = i + kStages - 1;
    if (next < n_steps) {
      load_w(next % kStages, s0 + next);
      load_x(next % kStages, s0 + next);
    }
    cp_async_commit();
    const unsigned char* xs = smem + (i % kStages) * stage_bytes<MT, BN>();
    const unsigned char* ws = xs + kXBytes;
#pragma unroll
    for (int h = 0; h < kBK / 32; ++h) {
      const int kk = 2 * h + kg;  // the two warp groups take alternate 16-wide k
      uint32_t af[MT][4];
#pragma unroll
      for (int m = 0; m < MT; ++m) ldmatrix_x4(af[m], xs + swz(m * 16 + (lane & 15), 2 * kk + (lane >> 4)));
#pragma unroll
      for (int j = 0; j < kN8 / 2; ++j) {
        uint32_t bf[4];
        const int n = wn * kWarpN + j * 16 + (lane & 7) + ((lane >> 4) << 3);
        ldmatrix_x4(bf, ws + swz(n, 2 * kk + ((lane >> 3) & 1)));
#pragma unroll
        for (int m = 0; m < MT; ++m) {
          mma_bf16(acc[m][2 * j], af[m], bf[0], bf[1]);
          mma_bf16(acc[m][2 * j + 1], af[m], bf[2], bf[3]);
        }
      }
    }
  }
  cp_async_wait<0>();
  __syncthreads();  // every warp is done with the stages: they become the partial tile

  // The block's partial tile: warp group 0 stores, group 1 adds (the same elements, same lanes).
  float* red = reinterpret_cast<float*>(smem);
  constexpr int kStride = red_stride<BN>();
  for (int pass = 0; pass < 2; ++pass) {
    if (kg == pass) {
#pragma unroll
      for (int m = 0; m < MT; ++m)
#pragma unroll
        for (int j = 0; j < kN8; ++j) {
          const int col = wn * kWarpN + j * 8 + 2 * t, r = m * 16 + g;
          float2* p0 = reinterpret_cast<float2*>(red + r * kStride + col);
          float2* p1 = reinterpret_cast<float2*>(red + (r + 8) * kStride + col);
          if (pass == 0) {
            *p0 = make_float2(acc[m][j][0], acc[m][j][1]);
            *p1 = make_float2(acc[m][j][2], acc[m][j][3]);
          } else {
            const float2 v0 = *p0, v1 = *p1;
            *p0 = make_float2(v0.x + acc[m][j][0], v0.y + acc[m][j][1]);
            *p1 = make_float2(v1.x + acc[m][j][2], v1.y + acc[m][j][3]);
          }
        }
    }
    if (pass == 0) __syncthreads();
  }
  if (split > 1) {
    cg::this_cluster().sync();  // release / acquire at cluster scope: the peers' tiles are visible
  } else {
    __syncthreads();
  }
  // Items of 4 consecutive columns (kSwiGlu: 4 gate columns and their up columns); each thread
  // issues the loads of every rank's partial before it adds them, in rank order.
  const float* part[kMaxSplit];
#pragma unroll
  for (int q = 0; q < kMaxSplit; ++q)
    part[q] = split > 1 && q < split ? cg::this_cluster().map_shared_rank(red, q) : red;
  constexpr int kQuads = kSwiGlu ? BN / 8 : BN / 4;
  const int o0 = tile * (kSwiGlu ? BN / 2 : BN);
  auto gather = [&](int off) {
    float4 v[kMaxSplit];
#pragma unroll
    for (int q = 0; q < kMaxSplit; ++q)
      if (q < split) v[q] = *reinterpret_cast<const float4*>(part[q] + off);
    float4 s = v[0];
#pragma unroll
    for (int q = 1; q < kMaxSplit; ++q)
      if (q < split) s.x += v[q].x, s.y += v[q].y, s.z += v[q].z, s.w += v[q].w;
    return s;
  };
  for (int e = rank * kThreads + tid; e < rows * kQuads; e += split * kThreads) {
    const int r = e / kQuads, col = 4 * (e - r * kQuads), o = o0 + col;
    if (o >= out) continue;
    const float4 s = gather(r * kStride + col);
    float4 up = make_float4(0.f, 0.f, 0.f, 0.f);
    if constexpr (kSwiGlu) up = gather(r * kStride + BN / 2 + col);
    linear_store<OUT>(a, r, o, make_float2(s.x, s.y), make_float2(up.x, up.y));
    if (o + 2 < out) linear_store<OUT>(a, r, o + 2, make_float2(s.z, s.w), make_float2(up.z, up.w));
  }
  if (split > 1) cg::this_cluster().sync();  // no block leaves while a peer may still read its tile
}

template <GemvOut OUT>
int tiles_for(const GemvArgs& a, int bn) {
  return CEIL_DIV(a.out, OUT == GemvOut::kSwiGlu ? bn / 2 : bn);
}

template <int MT, int BN, GemvOut OUT>
void launch(const GemvArgs& a, const MmaLinearPlan& p, cudaStream_t stream) {
  static_assert(size_t(MT * 16) * red_stride<BN>() * 4 <= smem_bytes<MT, BN>(), "partial tile fits the stages");
  auto* kernel = mma_linear_kernel<MT, BN, OUT>;
  const size_t smem = smem_bytes<MT, BN>();
  resident_blocks(reinterpret_cast<const void*>(kernel), kThreads, smem);  // raises the smem limit once
  if (p.split > 1) {
    launch_kernel_clusters(kernel, dim3(p.grid), dim3(kThreads), dim3(p.split), smem, stream, a, p.split);
  } else {
    launch_kernel(kernel, dim3(p.grid), dim3(kThreads), smem, stream, a, 1);
  }
}

template <GemvOut OUT>
void dispatch(const GemvArgs& a, const MmaLinearPlan& p, cudaStream_t stream) {
  const int mt = CEIL_DIV(a.rows, 16);
  auto bn = [&]<int MT>() {
    if (p.bn == 64) return launch<MT, 64, OUT>(a, p, stream);
    return launch<MT, 128, OUT>(a, p, stream);
  };
  switch (mt) {
    case 1: return bn.template operator()<1>();
    case 2: return bn.template operator()<2>();
    case 3: return bn.template operator()<3>();
    default: return bn.template operator()<4>();
  }
}

template <typename F>
auto by_out(GemvOut out_mode, F&& f) {
  switch (out_mode) {
    case GemvOut::kF32: return f.template operator()<GemvOut::kF32>();
    case GemvOut::kAddF32: return f.template operator()<GemvOut::kAddF32>();
    case GemvOut::kSwiGlu: return f.template operator()<GemvOut::kSwiGlu>();
    case GemvOut::kQkvRope: return f.template operator()<GemvOut::kQkvRope>();
    case GemvOut::kBf16: return f.template operator()<GemvOut::kBf16>();
  }
  cuda_check_failed("mma_linear", __FILE__, __LINE__, "unknown epilogue");
}

}  // namespace

// note: 128-row tiles halve the x traffic of 64-row ones (every tile reads all of x's run); a
// tile's blocks split `in` until the grid covers the SMs once, with at least two steps per block.
// Where even that leaves half the SMs idle (narrow, short matrices: 0.5B's qkv and o), 64-row
// tiles.
MmaLinearPlan mma_linear_plan(const GemvArgs& a, GemvOut out_mode, int bn, int split) {
  const int steps = CEIL_DIV(a.in, kBK);
  const int sms = device_sms();
  const int max_split = std::min(kMaxSplit, std::max(1, steps / 2));
  auto tiles = [&](int b) { return by_out(out_mode, [&]<GemvOut OUT>() { return tiles_for<OUT>(a, b); }); };
  auto split_for = [&](int b) { return std::clamp(CEIL_DIV(sms, tiles(b)), 1, max_split); };
  MmaLinearPlan p;
  p.bn = bn > 0 ? bn : (tiles(128) * split_for(128) >= sms / 2 ? 128 : 64);
  CUDA_SHAPE_CHECK(p.bn == 64 || p.bn == 128);
  p.split = split > 0 ? std::min({split, steps, kMaxSplit}) : split_for(p.bn);
  p.grid = tiles(p.bn) * p.split;
  return p;
}

void mma_linear(const GemvArgs& a, GemvIn in_mode, GemvOut out_mode, cudaStream_t stream, const MmaLinearPlan* plan) {
  check_linear_args(a, in_mode, out_mode, kMmaLinearMaxRows);
  GemvArgs b = a;
  if (in_mode == GemvIn::kRmsNorm) {
    CUDA_SHAPE_CHECK(a.x_norm != nullptr && a.in % 4 == 0);
    add_rms_norm(static_cast<float*>(const_cast<void*>(a.x)), nullptr, a.norm_w, a.x_norm, nullptr, a.rows, a.in,
                 a.eps, stream);
    b.x = a.x_norm;
  }
  const MmaLinearPlan p = plan ? *plan : mma_linear_plan(a, out_mode);
  CUDA_SHAPE_CHECK((p.bn == 64 || p.bn == 128) && p.split >= 1 && p.split <= kMaxSplit &&
                   p.grid == by_out(out_mode, [&]<GemvOut OUT>() { return tiles_for<OUT>(a, p.bn); }) * p.split);
  by_out(out_mode, [&]<GemvOut OUT>() { dispatch<OUT>(b, p, stream); });
}

}  // namespace mpserve::backend::cuda
