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
//
// Above 32 rows with 128-row tiles, one warpgroup runs wgmma (sm_90a, mma_linear_wg_kernel) on
// stages of the same layout that a producer warp fills through TMA: 64 batch rows are its M. With
// TMA it beats the cuBLASLt path on 3B-shaped 40-64-row steps by 0.2-3.5%, and loses on 0.5B,
// 1.5B (1-2%) and 7B (9%) (docs/results/cuda_backend.md, fifteenth session); the backend's row
// limits follow those measurements.
#include <algorithm>

#include <cooperative_groups.h>
#include <cuda.h>
#include <cudaTypedefs.h>

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
constexpr int kThreads = 256;  // 8 warps: 4 column quarters x 2 halves of each 32-wide k
// note: 4 stages, two blocks per SM at 64 rows. Measured on an H200 (docs/results/cuda_backend.md,
// seventh session): 2, 3 and 8 stages were slower or equal in steps at 32 and 64 rows.
constexpr int kStages = 4;
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

// One block's share of a tile: which 64-wide steps along `in` it takes (an equal run of the
// tile's steps for cluster rank `rank` of `split`).
struct StepRun {
  int s0, n;
  __device__ StepRun(int in, int rank, int split) {
    const int steps = CEIL_DIV(in, kBK);
    s0 = rank * steps / split;
    n = (rank + 1) * steps / split - s0;
  }
};

// The cp.async copies of one stage: THREADS threads, each a fixed 16-byte chunk column c of W
// rows lr + THREADS/8 j (tile rows mapped onto the weight, kSwiGlu: gate then up rows) and of x
// rows likewise (zero past `rows` and past `in`).
template <int XROWS, int BN, GemvOut OUT, int THREADS>
struct StageCopier {
  static constexpr int kLoadRows = THREADS / 8;
  static constexpr int kXBytes = XROWS * 128;
  static constexpr int kStageBytes = (XROWS + BN) * 128;
  const __nv_bfloat16* wrow[BN / kLoadRows];
  const __nv_bfloat16* x;
  int c, lr, rows, in, chunks;
  __device__ StageCopier(const GemvArgs& a, int tile, int tid) {
    c = tid & 7, lr = tid >> 3, rows = a.rows, in = a.in, chunks = a.in >> 3;
    x = static_cast<const __nv_bfloat16*>(a.x);
#pragma unroll
    for (int j = 0; j < BN / kLoadRows; ++j) {
      const int n = lr + kLoadRows * j;
      int r;
      if constexpr (OUT == GemvOut::kSwiGlu) {
        const int o = min(tile * (BN / 2) + n % (BN / 2), a.out - 1);  // past `out`: computed, dropped
        r = n < BN / 2 ? o : a.out + o;
      } else {
        r = min(tile * BN + n, a.out - 1);
      }
      wrow[j] = a.w + static_cast<int64_t>(r) * in;
    }
  }
  __device__ void w(unsigned char* stages, int slot, int step) const {
    unsigned char* ws = stages + slot * kStageBytes + kXBytes;
    const int kc = step * (kBK / 8) + c;
    const bool ok = kc < chunks;
#pragma unroll
    for (int j = 0; j < BN / kLoadRows; ++j) cp_async16(ws + swz(lr + kLoadRows * j, c), wrow[j] + 8 * kc, ok);
  }
  __device__ void xs(unsigned char* stages, int slot, int step) const {
    unsigned char* xb = stages + slot * kStageBytes;
    const int kc = step * (kBK / 8) + c;
#pragma unroll
    for (int j = 0; j < CEIL_DIV(XROWS, kLoadRows); ++j) {
      const int m = lr + kLoadRows * j;
      if (m >= XROWS) break;
      const bool ok = m < rows && kc < chunks;
      cp_async16(xb + swz(m, c), ok ? x + static_cast<int64_t>(m) * in + 8 * kc : x, ok);
    }
  }
  // The first kStages - 1 stages: weights before pdl_wait() (no kernel writes them), x after.
  __device__ void prologue(unsigned char* stages, const StepRun& run) const {
#pragma unroll
    for (int s = 0; s < kStages - 1; ++s)
      if (s < run.n) w(stages, s, run.s0 + s);
    pdl_wait();  // x and y belong to earlier kernels
    pdl_trigger();
#pragma unroll
    for (int s = 0; s < kStages - 1; ++s) {
      if (s < run.n) xs(stages, s, run.s0 + s);
      cp_async_commit();  // group 0 also holds the weight stages above
    }
  }
  // Step i's stage has landed for every thread (and step i - 1's slot is free): then the copies
  // of step i + kStages - 1 go out.
  __device__ void next(unsigned char* stages, const StepRun& run, int i) const {
    cp_async_wait<kStages - 2>();
    __syncthreads();
    const int nx = i + kStages - 1;
    if (nx < run.n) {
      w(stages, nx % kStages, run.s0 + nx);
      xs(stages, nx % kStages, run.s0 + nx);
    }
    cp_async_commit();
  }
};

// The tile's partial sums are in `red` (f32, rows x red_stride) of every block of the cluster:
// block `rank` adds its share of the (row, 4 columns) items over the ranks, in rank order, and
// stores them (kSwiGlu: 4 gate columns and their up columns). Every thread issues the loads of
// all ranks' partials of an item before it adds them.
template <int BN, GemvOut OUT, int THREADS>
__device__ void reduce_store(const GemvArgs& a, float* red, int tile, int rank, int split) {
  if (split > 1) {
    cg::this_cluster().sync();  // release / acquire at cluster scope: the peers' tiles are visible
  } else {
    __syncthreads();
  }
  constexpr bool kSwiGlu = OUT == GemvOut::kSwiGlu;
  constexpr int kStride = red_stride<BN>();
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
  for (int e = rank * THREADS + static_cast<int>(threadIdx.x); e < a.rows * kQuads; e += split * THREADS) {
    const int r = e / kQuads, col = 4 * (e - r * kQuads), o = o0 + col;
    if (o >= a.out) continue;
    const float4 s = gather(r * kStride + col);
    float4 up = make_float4(0.f, 0.f, 0.f, 0.f);
    if constexpr (kSwiGlu) up = gather(r * kStride + BN / 2 + col);
    linear_store<OUT>(a, r, o, make_float2(s.x, s.y), make_float2(up.x, up.y));
    if (o + 2 < a.out) linear_store<OUT>(a, r, o + 2, make_float2(s.z, s.w), make_float2(up.z, up.w));
  }
  if (split > 1) cg::this_cluster().sync();  // no block leaves while a peer may still read its tile
}

template <int MT, int BN, GemvOut OUT>
__global__ void __launch_bounds__(kThreads) mma_linear_kernel(GemvArgs a, int split) {
  constexpr int kXRows = MT * 16;
  constexpr int kWarpN = BN / 4;  // columns per warp
  constexpr int kN8 = kWarpN / 8;
  using Copier = StageCopier<kXRows, BN, OUT, kThreads>;
  extern __shared__ __align__(128) unsigned char smem[];

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wn = warp & 3, kg = warp >> 2;  // column quarter, half of each step's 16-wide k
  const int g = lane >> 2, t = lane & 3;
  const int rank = static_cast<int>(blockIdx.x) % split, tile = static_cast<int>(blockIdx.x) / split;
  const StepRun run(a.in, rank, split);
  const Copier copy(a, tile, tid);
  copy.prologue(smem, run);

  float acc[MT][kN8][4];
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int j = 0; j < kN8; ++j) acc[m][j][0] = acc[m][j][1] = acc[m][j][2] = acc[m][j][3] = 0.f;

  for (int i = 0; i < run.n; ++i) {
    copy.next(smem, run, i);
    const unsigned char* xs = smem + (i % kStages) * Copier::kStageBytes;
    const unsigned char* ws = xs + Copier::kXBytes;
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
  reduce_store<BN, OUT, kThreads>(a, red, tile, rank, split);
}

// ---- 33..64 rows: wgmma (sm_90a) ----
// note: 64 batch rows are wgmma's M; x and W stages are in the layout of its 128-byte-swizzled
// K-major shared-memory operands (16-byte chunk c of row r at c ^ (r % 8), stage bases 1024-byte
// aligned, the layout TMA's 128-byte swizzle writes), so a 16-wide k slice is a descriptor 32
// bytes further on.
constexpr int kWgThreads = 128;  // the consumer warpgroup
constexpr int kWgBN = 128;
constexpr int kWgMinRows = 32;  // above this many rows (3-4 m-tiles of mma.sync) the wgmma kernel

// Shared-memory matrix descriptor of a K-major, 128-byte-swizzled operand starting at p: rows of
// 128 bytes, 8-row groups 1024 bytes apart (stride byte offset), leading byte offset unused (1).
__device__ __forceinline__ uint64_t sw128_desc(const void* p) {
  return uint64_t((smem_addr(p) & 0x3FFFF) >> 4) | (uint64_t(1) << 16) | (uint64_t(1024 >> 4) << 32) |
         (uint64_t(1) << 62);
}

// d (64 x 128 f32, the warpgroup's accumulator fragment) += A (64 x 16) . B (16 x 128).
__device__ __forceinline__ void wgmma_m64n128k16(float (&d)[64], uint64_t da, uint64_t db) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(da), "l"(db), "r"(1));
#else
  __trap();  // built without sm_90a: never silently skip the product
#endif
}
__device__ __forceinline__ void wgmma_fence() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wgmma_commit() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
// Waits until at most N committed wgmma groups of the warpgroup are pending.
template <int N>
__device__ __forceinline__ void wgmma_wait(float (&d)[64]) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
  // note: the accumulators are in flight until the wait: tie them to it so that no read or
  // write of d moves above it.
#pragma unroll
  for (int i = 0; i < 64; ++i) asm volatile("" : "+f"(d[i])::"memory");
#endif
}

// ---- 33..64 rows: a producer warp feeding one wgmma warpgroup through TMA ----
// note: the stages are filled by TMA (cp.async.bulk.tensor with the 128-byte swizzle, the layout
// sw128_desc describes) from one lane of a fifth warp, and tracked by a full / empty mbarrier
// pair per stage, so the consumer warpgroup never issues a copy or joins a block barrier inside
// the loop. x rows past `rows` and weight rows or columns past the matrix come back as zeros
// from the tensor maps' bounds. Measured on an H200 (docs/results/cuda_backend.md, fifteenth
// session), the same loop fed by cp.async from the warpgroup's own threads made 40-64-row steps
// 2-5% slower; 6 stages (one block per SM) were slower per launch than 4.
constexpr int kTmaThreads = kWgThreads + 32;
constexpr int kTmaStageBytes = (64 + kWgBN) * 128;
constexpr int kTmaStages = 4;  // two blocks per SM

__device__ __forceinline__ void mbar_init(uint64_t* bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_addr(bar)) : "memory");
}
__device__ __forceinline__ void mbar_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(bytes)
               : "memory");
}
// Spins until the barrier's phase of parity `parity` has completed.
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
  uint32_t done = 0;
  do {
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(smem_addr(bar)), "r"(parity)
        : "memory");
  } while (!done);
}
// Box (c0 = column along `in`, c1 = row) of tensor map `map` into shared memory at dst; its bytes
// complete a transaction of `bar`.
__device__ __forceinline__ void tma_load_2d(void* dst, const CUtensorMap* map, int c0, int c1, uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], "
      "[%4];\n" ::"r"(smem_addr(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(smem_addr(bar))
      : "memory");
}

template <GemvOut OUT>
__global__ void __launch_bounds__(kTmaThreads) mma_linear_wg_kernel(GemvArgs a, int split,
                                                                      const __grid_constant__ CUtensorMap w_map,
                                                                      const __grid_constant__ CUtensorMap x_map) {
  constexpr int S = kTmaStages;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  // wgmma's swizzle pattern repeats every 1024 bytes: align the stages to it (launch adds 1 KiB).
  unsigned char* smem = smem_raw + ((1024 - (smem_addr(smem_raw) & 1023)) & 1023);
  __shared__ __align__(8) uint64_t full[S], empty[S];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int rank = static_cast<int>(blockIdx.x) % split, tile = static_cast<int>(blockIdx.x) / split;
  const StepRun run(a.in, rank, split);
  if (tid == 0) {
#pragma unroll
    for (int s = 0; s < S; ++s) mbar_init(&full[s], 1), mbar_init(&empty[s], kWgThreads / 32);
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();

  float d[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) d[i] = 0.f;
  if (warp == kWgThreads / 32) {
    // Producer: one lane issues every copy. The weight boxes of the first S stages go out before
    // the PDL wait (no kernel writes weights), x's after.
    if (lane == 0) {
      auto w_box = [&](int i) {
        unsigned char* ws = smem + (i % S) * kTmaStageBytes + 64 * 128;
        const int k0 = (run.s0 + i) * kBK;
        if constexpr (OUT == GemvOut::kSwiGlu) {
          tma_load_2d(ws, &w_map, k0, tile * (kWgBN / 2), &full[i % S]);
          tma_load_2d(ws + (kWgBN / 2) * 128, &w_map, k0, a.out + tile * (kWgBN / 2), &full[i % S]);
        } else {
          tma_load_2d(ws, &w_map, k0, tile * kWgBN, &full[i % S]);
        }
      };
      auto x_box = [&](int i) {
        tma_load_2d(smem + (i % S) * kTmaStageBytes, &x_map, (run.s0 + i) * kBK, 0, &full[i % S]);
      };
      const int first = min(S, run.n);
      for (int i = 0; i < first; ++i) {
        mbar_arrive_expect_tx(&full[i], kTmaStageBytes);
        w_box(i);
      }
      pdl_wait();
      pdl_trigger();
      for (int i = 0; i < first; ++i) x_box(i);
      for (int i = S; i < run.n; ++i) {
        mbar_wait(&empty[i % S], ((i / S) & 1) ^ 1);  // step i - S's MMAs are done with the slot
        mbar_arrive_expect_tx(&full[i % S], kTmaStageBytes);
        w_box(i);
        x_box(i);
      }
    } else {
      pdl_wait();
    }
  } else {
    pdl_wait();  // (the epilogue reads and writes what earlier kernels touch)
    pdl_trigger();
    for (int i = 0; i < run.n; ++i) {
      mbar_wait(&full[i % S], (i / S) & 1);
      const unsigned char* xs = smem + (i % S) * kTmaStageBytes;
      const unsigned char* ws = xs + 64 * 128;
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kBK / 16; ++kk) wgmma_m64n128k16(d, sw128_desc(xs + 32 * kk), sw128_desc(ws + 32 * kk));
      wgmma_commit();
      wgmma_wait<1>(d);  // step i - 1's MMAs are done: its slot goes back to the producer
      if (i > 0 && lane == 0) mbar_arrive(&empty[(i - 1) % S]);
    }
    wgmma_wait<0>(d);
  }
  __syncthreads();  // every stage has been consumed: they become the partial tile

  float* red = reinterpret_cast<float*>(smem);
  constexpr int kStride = red_stride<kWgBN>();
  if (warp < kWgThreads / 32) {
    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int i = 0; i < kWgBN / 8; ++i) {
      const int r = 16 * warp + g, col = 8 * i + 2 * t;
      *reinterpret_cast<float2*>(red + r * kStride + col) = make_float2(d[4 * i], d[4 * i + 1]);
      *reinterpret_cast<float2*>(red + (r + 8) * kStride + col) = make_float2(d[4 * i + 2], d[4 * i + 3]);
    }
  }
  reduce_store<kWgBN, OUT, kTmaThreads>(a, red, tile, rank, split);
}

template <GemvOut OUT>
int tiles_for(const GemvArgs& a, int bn) {
  return CEIL_DIV(a.out, OUT == GemvOut::kSwiGlu ? bn / 2 : bn);
}

// Launches `kernel` (a, p.split, extra...) on the plan's grid and clusters.
template <typename K, typename... Extra>
void launch_kernel_plan(K* kernel, int threads, size_t smem, const GemvArgs& a, const MmaLinearPlan& p,
                        cudaStream_t stream, const Extra&... extra) {
  resident_blocks(reinterpret_cast<const void*>(kernel), threads, smem);  // raises the smem limit once
  // note: the largest shared memory: the stages take 72-96 KiB a block, and the kernel's
  // neighbours are its rms_norm and other tensor-core linears.
  const dim3 cluster(p.split);
  LaunchOptions opt;
  opt.cluster = p.split > 1 ? &cluster : nullptr;
  opt.max_shared = true;
  launch_kernel(kernel, dim3(p.grid), dim3(threads), opt, smem, stream, a, p.split, extra...);
}

template <int MT, int BN, GemvOut OUT>
void launch(const GemvArgs& a, const MmaLinearPlan& p, cudaStream_t stream) {
  static_assert(size_t(MT * 16) * red_stride<BN>() * 4 <= smem_bytes<MT, BN>(), "partial tile fits the stages");
  launch_kernel_plan(mma_linear_kernel<MT, BN, OUT>, kThreads, smem_bytes<MT, BN>(), a, p, stream);
}

// cuTensorMapEncodeTiled from the driver the runtime loaded (no link against libcuda).
PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static const PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult q{};
    CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &q));
    if (q != cudaDriverEntryPointSuccess || p == nullptr)
      cuda_check_failed("cudaGetDriverEntryPointByVersion", __FILE__, __LINE__, "no cuTensorMapEncodeTiled");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(p);
  }();
  return fn;
}

// A row-major bf16 (rows, cols) matrix as a TMA tensor map of (box_rows, 64)-element boxes, 128-byte
// swizzled (one box row is one 128-byte shared row); reads past its edges fill zeros.
CUtensorMap tensor_map(const __nv_bfloat16* base, int rows, int cols, int box_rows) {
  CUtensorMap m;
  const cuuint64_t dims[2] = {cuuint64_t(cols), cuuint64_t(rows)};
  const cuuint64_t strides[1] = {cuuint64_t(cols) * sizeof(__nv_bfloat16)};
  const cuuint32_t box[2] = {cuuint32_t(kBK), cuuint32_t(box_rows)};
  const cuuint32_t elem[2] = {1, 1};
  const CUresult r = tensor_map_encoder()(&m, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<__nv_bfloat16*>(base),
                                          dims, strides, box, elem, CU_TENSOR_MAP_INTERLEAVE_NONE,
                                          CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                                          CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS)
    cuda_check_failed("cuTensorMapEncodeTiled", __FILE__, __LINE__, "cannot encode the tensor map");
  return m;
}

template <GemvOut OUT>
void launch_wg(const GemvArgs& a, const MmaLinearPlan& p, cudaStream_t stream) {
  const bool swiglu = OUT == GemvOut::kSwiGlu;
  const CUtensorMap w = tensor_map(a.w, swiglu ? 2 * a.out : a.out, a.in, swiglu ? kWgBN / 2 : kWgBN);
  const CUtensorMap x = tensor_map(static_cast<const __nv_bfloat16*>(a.x), a.rows, a.in, 64);
  launch_kernel_plan(mma_linear_wg_kernel<OUT>, kTmaThreads, size_t(kTmaStages) * kTmaStageBytes + 1024, a, p, stream,
                     w, x);
}

template <GemvOut OUT>
void dispatch(const GemvArgs& a, const MmaLinearPlan& p, cudaStream_t stream) {
  if (p.wgmma) {
    static_assert(size_t(64) * red_stride<kWgBN>() * 4 <= size_t(kTmaStages) * kTmaStageBytes);
    return launch_wg<OUT>(a, p, stream);
  }
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
// tiles; above 32 rows always 128-row tiles, on the wgmma kernel.
MmaLinearPlan mma_linear_plan(const GemvArgs& a, GemvOut out_mode, int bn, int split) {
  const int steps = CEIL_DIV(a.in, kBK);
  const int sms = device_sms();
  const int max_split = std::min(kMaxSplit, std::max(1, steps / 2));
  auto tiles = [&](int b) { return by_out(out_mode, [&]<GemvOut OUT>() { return tiles_for<OUT>(a, b); }); };
  auto split_for = [&](int b) { return std::clamp(CEIL_DIV(sms, tiles(b)), 1, max_split); };
  MmaLinearPlan p;
  p.bn = bn > 0 ? bn : (a.rows > kWgMinRows || tiles(128) * split_for(128) >= sms / 2 ? 128 : 64);
  CUDA_SHAPE_CHECK(p.bn == 64 || p.bn == 128);
  p.split = split > 0 ? std::min({split, steps, kMaxSplit}) : split_for(p.bn);
  p.grid = tiles(p.bn) * p.split;
  p.wgmma = a.rows > kWgMinRows && p.bn == kWgBN;
  return p;
}

// note: the norm launch before a linear triggers the linear's launch at its start (rms_norm's
// `early`) only ahead of the mma.sync kernel on hidden sizes up to 1536. Measured on an H200 against
// the trigger after the norm's wait (docs/results/cuda_backend.md, fifteenth session): 0.5B and 1.5B
// steps of 12-16 rows 0.7-3.8% shorter; 3B mixed (16 x 512 +3%, 32 x 128 -2%, 12 x 128 even); ahead
// of the wgmma kernel 3B 64-row steps 3.5-4.3% longer.
constexpr int kEarlyNormMaxHidden = 1536;

void mma_linear(const GemvArgs& a, GemvIn in_mode, GemvOut out_mode, cudaStream_t stream, const MmaLinearPlan* plan) {
  check_linear_args(a, in_mode, out_mode, kMmaLinearMaxRows);
  GemvArgs b = a;
  const MmaLinearPlan p = plan ? *plan : mma_linear_plan(a, out_mode);
  const int tiles = by_out(out_mode, [&]<GemvOut OUT>() { return tiles_for<OUT>(a, p.bn); });
  CUDA_SHAPE_CHECK((p.bn == 64 || p.bn == 128) && (!p.wgmma || p.bn == kWgBN) && p.split >= 1 &&
                   p.split <= kMaxSplit && p.grid == tiles * p.split);
  if (in_mode == GemvIn::kRmsNorm) {
    CUDA_SHAPE_CHECK(a.x_norm != nullptr && a.in % 4 == 0);
    rms_norm(static_cast<const float*>(a.x), a.norm_w, a.x_norm, nullptr, a.rows, a.in, a.eps, stream,
             /*early=*/!p.wgmma && a.in <= kEarlyNormMaxHidden);
    b.x = a.x_norm;
  }
  by_out(out_mode, [&]<GemvOut OUT>() { dispatch<OUT>(b, p, stream); });
}

}  // namespace mpserve::backend::cuda
