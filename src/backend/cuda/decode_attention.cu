// Decode attention on tensor cores, one pass (flash-decoding), with the partition merge fused in.
// note: a block is (sequence, kv head, partition of keys: see sequence_partition); its 4 or 8
// warps (decode_warps: 8 when the step has few (sequence, kv head) pairs) take the partition's
// 16-key tiles round-robin and work independently: each streams its own tiles through
// a kStages-deep cp.async pipeline in shared memory (decode_stages: 2 for 8-warp blocks, 3 for
// 4-warp ones; no block barrier in the loop, kStages - 1 tiles in flight per warp besides the
// one in use), computes S = Q K^T with mma.sync m16n8k16 (the GQA
// group's <= 8 query rows padded to 16), keeps an online softmax in registers (exp2, scale folded
// in), and accumulates O^T += V^T P^T with a second mma whose B operand is P straight from the S
// accumulators (their layout is the B layout of the transposed product, so N = 8 query heads
// wastes nothing). The warps merge through shared memory at the end. Steps with many (sequence,
// kv head) pairs run one block per pair for the whole sequence (decode_one_block_warps: 4-warp
// blocks, or 2-warp ones, four per SM, from 512 pairs up to 1024 keys), on the partition path
// with a single partition. Two ways to split a long sequence over blocks otherwise:
//   - cluster mode (few (sequence, kv head) pairs: decode_cluster): the blocks of one pair form a
//     thread-block cluster, each takes an equal run of tiles, and they merge their (m, l, O)
//     through distributed shared memory between two cluster barriers (~0.5 us);
//   - the partition path (many pairs): a sequence with several partitions writes f32 partials;
//     the last of its blocks to finish (an atomic counter per (sequence, kv head), reset to 0 by
//     that block, so graph replays start from 0) merges them: a fence, an atomic and two reads
//     through L2 in a row, ~3-4 us at batch 1, which is why small steps use clusters.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include <cooperative_groups.h>

#include "backend/cuda/attention.cuh"
#include "backend/cuda/cuda_check.cuh"
#include "backend/cuda/mma.cuh"
#include "backend/cuda/pdl.cuh"
#include "common/env.h"

namespace mpserve::backend::cuda {
namespace {

constexpr int kTile = 16;   // keys per warp step: the k extent of one P.V mma
constexpr int kG = kDecodeMaxGroup;  // query heads per block = the N of the P.V mma
static_assert(kG == 8, "the P.V mma has N = 8 query heads");
// A lane holds the cache offset of one of its warp's tiles, so a warp has at most 32 tiles
// (blocks have 4 or 8 warps, see decode_warps).
static_assert(kDecodeKeysPerWarp == kTile * 32, "one tile offset per lane");
static_assert(kDecodeMaxPartition <= 4 * kDecodeKeysPerWarp, "partition too large for the tile offsets");

// Per warp and stage: K tile [kTile][D] then V tile [kTile][D] (bf16). At the end the region
// becomes the warps' f32 outputs [W][kG][D + 4] (row stride D + 4: the fragment stores of a
// warp hit 32 distinct banks).
template <int D>
constexpr int kStageElems = 2 * kTile * D;
template <int D, int W>
constexpr size_t red_bytes() {
  return sizeof(float) * W * kG * (D + 4);
}
template <int D, int W, int S>
constexpr size_t smem_bytes() {
  constexpr size_t pipe = sizeof(__nv_bfloat16) * W * S * kStageElems<D>;
  return pipe > red_bytes<D, W>() ? pipe : red_bytes<D, W>();
}
// Cluster mode: a block's merged partial O [kG][D] (f32) sits after the warps' outputs, in the
// pipeline region, where its cluster peers read it.
template <int D, int W, int S>
constexpr bool cluster_fits() {
  return red_bytes<D, W>() + sizeof(float) * kG * D <= smem_bytes<D, W, S>();
}
static_assert(cluster_fits<64, 4, 2>() && cluster_fits<64, 8, 2>() && cluster_fits<128, 4, 2>() &&
              cluster_fits<128, 8, 2>());
// Cluster mode keeps a sequence in one block while that block has at most kClusterOneBlockTiles
// tiles per warp; beyond, it uses ceil(tiles / (kClusterMinTilesPerWarp * warps)) blocks, at most
// the cluster. Measured on an H200 (DecodeAttentionBench partition_sweep_small_batch, batch 1, 8
// warps): ctx 160 (10 tiles) one block 2.9/3.9 us (0.5B/3B) vs 3.5/4.7 split in two; ctx 544 (34
// tiles) 5 blocks 3.7/4.6 us vs 3 blocks 4.0/5.5 (and the partition path's best 5.7/7.8).
constexpr int kClusterOneBlockTiles = 3;
constexpr int kClusterMinTilesPerWarp = 1;
constexpr int kMaxCluster = 8;  // the portable cluster size

__device__ __forceinline__ void cluster_sync() { cooperative_groups::this_cluster().sync(); }


__device__ __forceinline__ float fast_exp2(float x) {  // ex2.approx: exp2(-inf) = 0
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// Offset (bf16 elements) in a [kTile][D] tile of the address lane gives ldmatrix.x4 for column
// pair `pair` (chunks 2*pair, 2*pair + 1 of 8 values): matrices 0..3 = (keys 0-7, chunk lo),
// (keys 0-7, chunk hi), (keys 8-15, chunk lo), (keys 8-15, chunk hi).
// note: 16-byte chunk c of row r is stored at chunk c ^ (r % 8): rows are 128 or 256 bytes apart,
// and the swizzle puts the eight rows an ldmatrix matrix reads on distinct banks.
template <int D>
__device__ __forceinline__ int frag_offset(int lane, int pair) {
  const int r = ((lane >> 4) << 3) + (lane & 7);
  const int c = 2 * pair + ((lane >> 3) & 1);
  return r * D + ((c ^ (lane & 7)) << 3);
}

// Fragment layouts (PTX ISA, mma.m16n8k16), g = lane / 4, t = lane % 4: the accumulator holds
// rows g and g + 8, columns 2t and 2t + 1; A register i holds row g + 8 * (i % 2), columns
// 2t + 8 * (i / 2) (+1); B register i holds rows (k) 2t + 8 * i (+1), column (n) g.
//   S (16 q x 8 keys, two per tile) = Q (16 q x 16 d) . K^T: rows g + 8 are padding (A regs 1, 3
//   are 0); a lane holds S[q = g][keys 2t, 2t + 1] and [keys 8 + 2t, 9 + 2t] of its tile.
//   O^T (16 d x 8 q) += V^T (16 d x 16 keys) . P^T (16 keys x 8 q): the B registers are exactly
//   the lane's P values above; the lane holds O[q = 2t, 2t + 1][d = 16 m + g, 16 m + g + 8].
// Keys per block for a sequence of kv_len keys: at least the bucket's partition (the grid is
// sized for it); up to 512 keys one block (no merge at all); beyond, the smallest power of two
// that gives at most 16 partitions. Measured on an H200 (DecodeAttentionBench partition_sweep,
// batch 1 and 8, 0.5B/3B/7B heads): a merge costs ~2.5 us, so one block wins at ctx 512 (3B 6.7
// us vs 9.3 with 8 partitions), 2-4 partitions are the worst choice (3B ctx 512: 11-13 us), and
// 8-16 partitions are best for longer contexts (ctx 2048: 8.7-11.2 us vs 16.5 with 32; ctx 8192:
// 15.7 us vs 45.5 with 128). In `bench offline` (contexts just past 512 and 2048) a "~8
// partitions" rule landed on 5 partitions and lost 4-7% of the step.
__device__ __forceinline__ int sequence_partition(int kv_len, int bucket_partition) {
  int p = kDecodeMaxPartition;
  if (kv_len > kDecodeMaxPartition) {
    p = 64;
    while (p < kDecodeMaxPartition && p * 16 < kv_len) p *= 2;
  }
  return max(p, bucket_partition);
}

template <int D, int W, int S>
__global__ void __launch_bounds__(W * 32) decode_attention_kernel(DecodeAttentionArgs a) {
  constexpr int kStages = S;  // per-warp pipeline depth (tiles resident in shared memory)
  constexpr int kWarps = W;
  constexpr int kThreads = W * 32;
  constexpr int kChunks = D / 8;  // 16-byte chunks per key row
  constexpr int kRow = D + 4;     // f32 row stride of the warp-merge buffer
  extern __shared__ __align__(128) unsigned char smem_raw[];
  __shared__ float red_m[kWarps][kG], red_l[kWarps][kG];
  __shared__ int is_last;
  __shared__ float cl_ml[kG][2];  // cluster mode: this block's (m, l) per query head
  float* cl_o = reinterpret_cast<float*>(smem_raw + red_bytes<D, W>());  // cluster mode: [kG][D]

  const int tok = blockIdx.x, kvh = blockIdx.y, part = blockIdx.z;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  // Positions and block tables are this step's host data: readable before pdl_wait(), so the
  // partition choice and the table loads below overlap the previous kernel's tail.
  const int kv_len = a.positions[tok] + 1;
  int P;
  if (a.cluster > 1) {  // at most `cluster` runs of whole tiles (kClusterOneBlockTiles above)
    const int tiles = CEIL_DIV(kv_len, kTile);
    const int min_tiles = a.cluster_min_tiles > 0 ? a.cluster_min_tiles : kClusterMinTilesPerWarp;
    const int want = a.fixed_partition > 0                    ? CEIL_DIV(kv_len, a.fixed_partition)
                     : tiles <= kClusterOneBlockTiles * kWarps ? 1
                                                               : CEIL_DIV(tiles, min_tiles * kWarps);
    P = CEIL_DIV(tiles, max(1, min(want, a.cluster))) * kTile;
  } else {
    P = a.fixed_partition > 0 ? a.fixed_partition : sequence_partition(kv_len, a.partition_size);
  }
  const int num_parts = CEIL_DIV(kv_len, P);
  // Every block of the cluster (also those without keys) takes part in both cluster barriers.
  const bool cluster_merge = a.cluster > 1 && num_parts > 1;
  const int k_begin = part * P;
  // Lane j reads the table entry of its warp's tile j whether or not the sequence reaches it
  // (every entry up to max_blocks_per_seq exists).
  const int lane_key = k_begin + (warp + lane * kWarps) * kTile;
  int64_t lane_blk = 0;
  if (lane_key < k_begin + P && lane_key < a.max_blocks_per_seq * a.block_size)
    lane_blk = a.block_tables[static_cast<int64_t>(tok) * a.max_blocks_per_seq + lane_key / a.block_size];
  if (k_begin >= kv_len) {
    pdl_wait();
    if (cluster_merge) {
      pdl_trigger();  // a block that only waits at the barriers must not hold back the next kernel
      cluster_sync();
      cluster_sync();
    }
    return;
  }
  const int k_end = min(kv_len, k_begin + P);
  const int group = a.n_heads / a.n_kv_heads;
  const int g = lane >> 2, t = lane & 3;
  const int n_tiles = CEIL_DIV(k_end - k_begin, kTile);
  const int my_n = warp < n_tiles ? CEIL_DIV(n_tiles - warp, kWarps) : 0;  // warp-uniform

  // Lane j: element offset of this warp's tile j in either cache. A tile's 16 keys start at a
  // multiple of 16 and block_size is one, so they are 16 consecutive rows of one cache block.
  const int64_t tile_off = ((lane_blk * a.n_kv_heads + kvh) * a.block_size + lane_key % a.block_size) * D;

  pdl_wait();
  pdl_trigger();

  __nv_bfloat16* pipe = reinterpret_cast<__nv_bfloat16*>(smem_raw) + warp * kStages * kStageElems<D>;
  // Loads the warp's tile j into stage j % kStages (rows past the sequence zero-filled, so no
  // stale value can turn 0 * V into NaN); commits a group even when there is no tile j, so that
  // wait_group counts stay uniform.
  auto issue = [&](int j) {
    if (j < my_n) {
      const int64_t off = __shfl_sync(0xffffffffu, tile_off, j);
      const int key0 = k_begin + (warp + j * kWarps) * kTile;
      __nv_bfloat16* ks = pipe + (j % kStages) * kStageElems<D>;
      __nv_bfloat16* vs = ks + kTile * D;
#pragma unroll
      for (int i = 0; i < kTile * kChunks / 32; ++i) {
        const int idx = i * 32 + lane, r = idx / kChunks, c = idx % kChunks;
        const bool valid = key0 + r < k_end;
        const int64_t src = off + r * D + c * 8;
        const int dst = r * D + ((c ^ (r & 7)) << 3);
        cp_async16(ks + dst, a.k_cache + src, valid);
        cp_async16(vs + dst, a.v_cache + src, valid);
      }
    }
    cp_async_commit();
  };
#pragma unroll
  for (int j = 0; j < kStages - 1; ++j) issue(j);

  // Q as the A operand: row g = query head kvh * group + g (zero past the group).
  uint32_t qf[D / 16][2];
  {
    const bool row_ok = g < group;
    const __nv_bfloat16* qp =
        a.q + (static_cast<int64_t>(tok) * a.n_heads + kvh * group + (row_ok ? g : 0)) * D + 2 * t;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      qf[kk][0] = row_ok ? *reinterpret_cast<const uint32_t*>(qp + 16 * kk) : 0u;
      qf[kk][1] = row_ok ? *reinterpret_cast<const uint32_t*>(qp + 16 * kk + 8) : 0u;
    }
  }

  float o[D / 16][4];
#pragma unroll
  for (int m = 0; m < D / 16; ++m) o[m][0] = o[m][1] = o[m][2] = o[m][3] = 0.f;
  float m_run = -INFINITY, l_run = 0.f;  // row g, log2 domain; l_run: this lane's keys only
  const float sl = a.scale * kLog2e;

  for (int j = 0; j < my_n; ++j) {
    issue(j + kStages - 1);  // into the stage read at j - 1 (the __syncwarp below ended that)
    cp_async_wait<kStages - 1>();
    __syncwarp();  // every lane's copies of tile j are visible to the warp
    const __nv_bfloat16* ks = pipe + (j % kStages) * kStageElems<D>;
    const __nv_bfloat16* vs = ks + kTile * D;
    const int key0 = k_begin + (warp + j * kWarps) * kTile;

    float s[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t b[4];
      ldmatrix_x4(b, ks + frag_offset<D>(lane, kk));
      mma_bf16(s[0], qf[kk][0], 0u, qf[kk][1], 0u, b[0], b[1]);
      mma_bf16(s[1], qf[kk][0], 0u, qf[kk][1], 0u, b[2], b[3]);
    }

    // Online softmax of row g over the tile; x[e] is key key0 + 8 * (e / 2) + 2t + e % 2.
    float x[4] = {s[0][0], s[0][1], s[1][0], s[1][1]};
    float tmax = -INFINITY;
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int key = key0 + 8 * (e >> 1) + 2 * t + (e & 1);
      x[e] = key < k_end ? x[e] * sl : -INFINITY;
      tmax = fmaxf(tmax, x[e]);
    }
    tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, 1));
    tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, 2));
    const float m_new = fmaxf(m_run, tmax);  // finite: every tile has a visible key
    const float alpha = fast_exp2(m_run - m_new);
    m_run = m_new;
    // note: P is rounded to bf16 for the mma, and l sums the rounded values, so numerator and
    // denominator see the same weights.
    const __nv_bfloat162 p01 = __floats2bfloat162_rn(fast_exp2(x[0] - m_new), fast_exp2(x[1] - m_new));
    const __nv_bfloat162 p23 = __floats2bfloat162_rn(fast_exp2(x[2] - m_new), fast_exp2(x[3] - m_new));
    const float2 f01 = __bfloat1622float2(p01), f23 = __bfloat1622float2(p23);
    l_run = l_run * alpha + (f01.x + f01.y) + (f23.x + f23.y);
    const uint32_t pb0 = *reinterpret_cast<const uint32_t*>(&p01);
    const uint32_t pb1 = *reinterpret_cast<const uint32_t*>(&p23);

    // The O^T columns this lane holds are rows 2t, 2t + 1: their alphas live in lanes 8t, 8t + 4.
    const float a_lo = __shfl_sync(0xffffffffu, alpha, 8 * t);
    const float a_hi = __shfl_sync(0xffffffffu, alpha, 8 * t + 4);
#pragma unroll
    for (int m = 0; m < D / 16; ++m) {
      o[m][0] *= a_lo, o[m][1] *= a_hi, o[m][2] *= a_lo, o[m][3] *= a_hi;
      uint32_t v[4];
      ldmatrix_x4_trans(v, vs + frag_offset<D>(lane, m));
      mma_bf16(o[m], v[0], v[1], v[2], v[3], pb0, pb1);
    }
    __syncwarp();  // all lanes are done reading this stage before it is refilled
  }
  cp_async_wait<0>();  // only empty groups remain; drained before the region is reused
  l_run += __shfl_xor_sync(0xffffffffu, l_run, 1);
  l_run += __shfl_xor_sync(0xffffffffu, l_run, 2);
  __syncthreads();  // every warp is done with its stages: the region becomes red_o

  // Merge the warps (a warp without tiles has m = -inf, l = 0, O = 0 and weighs 0).
  float* red_o = reinterpret_cast<float*>(smem_raw);  // [kWarps][kG][kRow]
  if (t == 0) red_m[warp][g] = m_run, red_l[warp][g] = l_run;
  {
    float* ro = red_o + warp * kG * kRow;
#pragma unroll
    for (int m = 0; m < D / 16; ++m) {
      const int d = 16 * m + g;
      ro[(2 * t) * kRow + d] = o[m][0];
      ro[(2 * t + 1) * kRow + d] = o[m][1];
      ro[(2 * t) * kRow + d + 8] = o[m][2];
      ro[(2 * t + 1) * kRow + d + 8] = o[m][3];
    }
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < group * D; idx += kThreads) {
    const int q = idx / D, d = idx % D;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, red_m[w][q]);  // finite: warp 0 has a tile
    float l = 0.f, acc = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const float f = fast_exp2(red_m[w][q] - mx);
      l += red_l[w][q] * f;
      acc += red_o[(w * kG + q) * kRow + d] * f;
    }
    const int64_t head_row = static_cast<int64_t>(tok) * a.n_heads + kvh * group + q;
    if (num_parts == 1) {
      a.out[head_row * D + d] = __float2bfloat16_rn(acc / l);
    } else if (cluster_merge) {
      cl_o[q * D + d] = acc / l;
      if (d == 0) cl_ml[q][0] = mx, cl_ml[q][1] = l;
    } else {
      const int64_t row = static_cast<int64_t>(part) * a.num_tokens * a.n_heads + head_row;
      a.partial_o[row * D + d] = acc / l;
      if (d == 0) a.partial_ml[row * 2] = mx, a.partial_ml[row * 2 + 1] = l;
    }
  }
  if (num_parts == 1) return;

  if (cluster_merge) {
    // Every block's (m, l, O) is in its shared memory: the blocks holding keys share the group's
    // outputs out and each merges its share from all of them (independent loads first).
    cluster_sync();  // release / acquire at cluster scope: the peers' writes above are visible
    namespace cg = cooperative_groups;
    cg::cluster_group cl = cg::this_cluster();
    for (int idx = part * kThreads + threadIdx.x; idx < group * D; idx += num_parts * kThreads) {
      const int q = idx / D, d = idx % D;
      float mx = -INFINITY;
#pragma unroll
      for (int p = 0; p < kMaxCluster; ++p)
        if (p < num_parts) mx = fmaxf(mx, cl.map_shared_rank(&cl_ml[q][0], p)[0]);
      float den = 0.f, acc = 0.f;
#pragma unroll
      for (int p = 0; p < kMaxCluster; ++p) {
        if (p < num_parts) {
          const float* ml = cl.map_shared_rank(&cl_ml[q][0], p);
          const float w = fast_exp2(ml[0] - mx) * ml[1];
          den += w;
          acc = fmaf(*cl.map_shared_rank(cl_o + q * D + d, p), w, acc);
        }
      }
      a.out[(static_cast<int64_t>(tok) * a.n_heads + kvh * group + q) * D + d] = __float2bfloat16_rn(acc / den);
    }
    cluster_sync();  // no block leaves (its shared memory) while a peer may still read it
    return;
  }

  // Last block of this (sequence, kv head) merges the partitions (threadFenceReduction pattern:
  // partials, fence, count; the block that counts last reads the others' partials from L2).
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    int32_t* counter = a.counters + static_cast<int64_t>(tok) * a.n_kv_heads + kvh;
    const int done = atomicAdd(counter, 1);
    is_last = done == num_parts - 1;
    if (is_last) *counter = 0;  // every partition has counted: ready for the next launch
  }
  __syncthreads();
  if (!is_last) return;
  __threadfence();
  // note: two passes so that no load waits on an earlier one. (1) one warp per query head: the
  // max over partitions, each partition's weight exp2(m_p - max) * l_p (kept in shared memory
  // when it fits) and the normaliser, lanes striding over the partitions; (2) each thread sums
  // its outputs over the partitions with independent loads of the partial outputs only. (A
  // running-max merge chains every load behind the previous exp: ~num_parts L2 round trips, at
  // batch 1 and ctx 2048 (33 partitions) most of the kernel.)
  const int64_t part_stride = static_cast<int64_t>(a.num_tokens) * a.n_heads;
  const int64_t head_row0 = static_cast<int64_t>(tok) * a.n_heads + kvh * group;
  float* wts = reinterpret_cast<float*>(smem_raw);  // [group][num_parts], the pipeline region
  const bool wts_fit = static_cast<size_t>(group) * num_parts * sizeof(float) <= smem_bytes<D, W, S>();
  for (int q = warp; q < group; q += kWarps) {
    float mx = -INFINITY;
    for (int p = lane; p < num_parts; p += 32)
      mx = fmaxf(mx, __ldcg(a.partial_ml + (p * part_stride + head_row0 + q) * 2));
    for (int off = 16; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
    float l = 0.f;
    for (int p = lane; p < num_parts; p += 32) {
      const int64_t row = p * part_stride + head_row0 + q;
      const float w = fast_exp2(__ldcg(a.partial_ml + row * 2) - mx) * __ldcg(a.partial_ml + row * 2 + 1);
      if (wts_fit) wts[q * num_parts + p] = w;
      l += w;
    }
    for (int off = 16; off > 0; off >>= 1) l += __shfl_xor_sync(0xffffffffu, l, off);
    if (lane == 0) red_m[0][q] = mx, red_l[0][q] = l;
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < group * D; idx += kThreads) {
    const int q = idx / D, d = idx % D;
    const float mx = red_m[0][q];
    float acc = 0.f;
    if (wts_fit) {
#pragma unroll 8
      for (int p = 0; p < num_parts; ++p)
        acc = fmaf(__ldcg(a.partial_o + (p * part_stride + head_row0 + q) * D + d), wts[q * num_parts + p], acc);
    } else {
#pragma unroll 8
      for (int p = 0; p < num_parts; ++p) {
        const int64_t row = p * part_stride + head_row0 + q;
        const float w = fast_exp2(__ldcg(a.partial_ml + row * 2) - mx) * __ldcg(a.partial_ml + row * 2 + 1);
        acc = fmaf(__ldcg(a.partial_o + row * D + d), w, acc);
      }
    }
    a.out[(head_row0 + q) * D + d] = __float2bfloat16_rn(acc / red_l[0][q]);
  }
}

template <int D, int W, int S>
void launch(const DecodeAttentionArgs& a, cudaStream_t stream) {
  static bool attr_set = false;  // raise the dynamic shared-memory limit once per instantiation
  if (!attr_set) {
    CUDA_CHECK(cudaFuncSetAttribute(decode_attention_kernel<D, W, S>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(smem_bytes<D, W, S>())));
    attr_set = true;
  }
  // Cluster mode: the grid's z is the cluster (one cluster per (sequence, kv head)); else the
  // bucket's partitions.
  const dim3 cluster(1, 1, a.cluster);
  LaunchOptions opt;
  opt.cluster = a.cluster > 1 ? &cluster : nullptr;
  opt.max_shared = a.max_shared;
  launch_kernel(decode_attention_kernel<D, W, S>,
                dim3(a.num_tokens, a.n_kv_heads, a.cluster > 1 ? a.cluster : a.max_partitions), dim3(W * 32), opt,
                smem_bytes<D, W, S>(), stream, a);
}

}  // namespace

// note: measured on an H200 (DecodeAttentionBench partition_sweep_small_batch, L2 evicted): at
// batch 1, 8 warps take 0.5B/3B/7B decode attention from 5.5/6.6/6.6 to 4.3/5.7/5.6 us at ctx 512
// and from 8.4/11.2/11.0 to 6.4/8.7/9.0 at ctx 2048; at batch 8 they still win with 2 kv heads (16
// pairs: 3B ctx 2048 11.9 vs 13.5 us) but lose with 4 (7B, 32 pairs: 19.6 vs 17.0).
int decode_warps(int num_tokens, int n_kv_heads) { return num_tokens * n_kv_heads <= 16 ? 8 : 4; }

// note: the pipeline depth of 8-warp blocks is set by shared memory, not by the kernel's own
// speed. Three stages of D = 128 take 192 KiB, more than any other kernel of a decode step, and
// steps were slower around attention than inside it: 3B batch 1 spent 2.33 ms at ctx 512 against
// 2.11 at 128, with every kernel of the step slower, not only attention (sixth session). Two
// stages (128 KiB) remove most of that; measured on an H200 (bench offline, graphs, same binary):
// 7B batch 1 4.40 -> 4.02 ms at ctx 128, 4.30 -> 4.05 at 512, 4.38 -> 4.13 at 2048; 3B batch 1
// 2.33 -> 2.19 at ctx 512 and 2.38 -> 2.26 at 2048; 0.5B and 1.5B batch 1, 3B at ctx 128 and batch
// 8 within +-2%. The likely mechanism: an SM switches its L1 / shared-memory carveout only when
// drained, and forcing one carveout on every kernel (cudaFuncAttributePreferredSharedMemoryCarveout)
// moved whole steps by up to 35% either way. 4-warp blocks (more than 16 (sequence, kv head)
// pairs; 96 KiB at D = 128) keep three stages: two measured 1-3% slower there.
static int decode_stages(int warps) { return warps == 8 ? 2 : 3; }

// note: measured on an H200 (DecodeAttentionBench partition_sweep_small_batch and
// cluster_sweep_mid_batch): at batch 1 clusters of 8 (3B ctx 2048: 6.5 us vs 9.7 on the partition
// path); at batch 8 with 2 kv heads clusters of 4 beat 8 (3B ctx 2048: 9.7-10.2 us vs 14.8); from 32
// (sequence, kv head) pairs up, clusters of 2 beat the partition path at every batch (16-256) and
// context measured, and clusters of 4 except on 0.5B at batch 16 (3B batch 64 ctx 2048: 37.2 us vs
// 44.2 with 4 and 52.6; 7B batch 256 ctx 544: 90 vs 125; 0.5B batch 256 ctx 2048: 68.6 vs 80.8).
int decode_cluster(int num_tokens, int n_kv_heads, int max_kv_len) {
  const int pairs = num_tokens * n_kv_heads;
  const int warps = decode_warps(num_tokens, n_kv_heads);
  for (int c = pairs <= 8 ? kMaxCluster : pairs <= 16 ? 4 : 2; c <= kMaxCluster; c *= 2)
    if (decode_cluster_ok(c, warps, max_kv_len)) return c;
  return 1;
}

// A lane holds the cache offset of one of its warp's tiles: at most 32 tiles per warp and block.
bool decode_cluster_ok(int cluster, int warps, int max_kv_len) {
  return cluster >= 2 && cluster <= kMaxCluster && max_kv_len <= cluster * warps * kDecodeKeysPerWarp;
}

// note: measured on an H200 (DecodeAttentionBench one_block_per_sequence and one_block_warps, L2
// evicted, 0.5B-7B heads, max_len = ctx + 64). Against clusters of 2, one 4-warp block per
// (sequence, kv head) is 3-41% faster at every context from 150 to 1500 keys from 128 pairs up
// (3B batch 256: 25.1 -> 18.0 us at ctx 150, 40.4 -> 26.3 at 300, 77.5 -> 67.4 at 1000; batch 64:
// 11.8 -> 8.6 at 300). At 32-64 pairs it wins up to ~450 keys (3B batch 16 ctx 300: 7.8 -> 6.5 us)
// and loses from ~700-1000 (batch 16 ctx 1500: 13.6 -> 18.4). From 512 pairs, 2-warp blocks (four
// per SM) beat 4-warp ones up to 1024 keys (3B batch 256: 18.0 -> 14.4 us at ctx 150, 64.4 -> 63.4
// at 950; 1.5B and 7B alike) except at head_dim 64, where they are within -2..+2.5% (0.5B batch
// 256: 8.3 -> 8.1 us at ctx 150, 12.8 -> 13.1 at 300); below 512 pairs they lose (3B batch 64 ctx
// 300: 8.6 -> 10.1). 1-warp blocks lose to 2-warp ones everywhere. Below 32 pairs the cluster
// policy stays.
int decode_one_block_warps(int num_tokens, int n_kv_heads, int max_kv_len) {
  const int pairs = num_tokens * n_kv_heads;
  if (decode_warps(num_tokens, n_kv_heads) != 4) return 0;
  if (pairs >= 512 && max_kv_len <= 2 * kDecodeKeysPerWarp) return 2;
  if (pairs >= 128 && max_kv_len <= 4 * kDecodeKeysPerWarp) return 4;
  if (pairs >= 32 && max_kv_len <= kDecodeMaxPartition) return 4;
  return 0;
}

int decode_partition_size(int num_tokens, int n_kv_heads, int max_kv_len, int num_sms) {
  const int want = CEIL_DIV(2 * num_sms, num_tokens * n_kv_heads);
  int p = 64;
  while (p < kDecodeMaxPartition && CEIL_DIV(max_kv_len, p) > want) p *= 2;
  return p;
}

void decode_attention(const DecodeAttentionArgs& a, cudaStream_t stream) {
  CUDA_SHAPE_CHECK(a.n_heads > 0 && a.n_kv_heads > 0 && a.n_heads % a.n_kv_heads == 0);
  CUDA_SHAPE_CHECK(a.n_heads / a.n_kv_heads <= kDecodeMaxGroup);
  CUDA_SHAPE_CHECK(a.head_dim == 64 || a.head_dim == 128);
  CUDA_SHAPE_CHECK(a.block_size > 0 && a.block_size % kTile == 0 && a.max_blocks_per_seq > 0);
  CUDA_SHAPE_CHECK(a.warps == 0 || a.warps == 1 || a.warps == 2 || a.warps == 4 || a.warps == 8);
  const int w = a.warps ? a.warps : decode_warps(a.num_tokens, a.n_kv_heads);
  CUDA_SHAPE_CHECK(w >= 4 || a.cluster <= 1);  // 1- and 2-warp blocks: the partition path only
  // One block per (sequence, kv head) may take up to every lane's tile of every warp.
  const int one_block_keys =
      a.cluster <= 1 && a.max_partitions == 1 ? w * kDecodeKeysPerWarp : std::min(w * kDecodeKeysPerWarp, kDecodeMaxPartition);
  CUDA_SHAPE_CHECK(a.partition_size > 0 && a.partition_size % 32 == 0 && a.partition_size <= one_block_keys);
  if (a.cluster > 1) {
    CUDA_SHAPE_CHECK(a.cluster == 2 || a.cluster == 4 || a.cluster == 8);
    CUDA_SHAPE_CHECK(decode_cluster_ok(a.cluster, w, a.max_blocks_per_seq * a.block_size));
    CUDA_SHAPE_CHECK(a.fixed_partition == 0 || (a.fixed_partition % kTile == 0 && a.fixed_partition <= w * kDecodeKeysPerWarp));
  } else {
    CUDA_SHAPE_CHECK(a.max_partitions >= 1 && a.max_partitions <= 65535);
    CUDA_SHAPE_CHECK(a.max_kv_len >= 0 && a.max_kv_len <= a.max_blocks_per_seq * a.block_size);
    CUDA_SHAPE_CHECK(a.max_partitions * a.partition_size >=
                     (a.max_kv_len > 0 ? a.max_kv_len : a.max_blocks_per_seq * a.block_size));
    CUDA_SHAPE_CHECK(a.max_partitions == 1 || (a.partial_o && a.partial_ml && a.counters));
  }
  CUDA_SHAPE_CHECK(a.cluster > 1 || a.fixed_partition == 0 ||
                   (a.fixed_partition % 32 == 0 && a.fixed_partition >= a.partition_size &&
                    a.fixed_partition <= one_block_keys));
  if (a.num_tokens == 0) return;
  static const int forced = [] {  // MPSERVE_CUDA_ATTN_STAGES: 2 or 3, else 0 (the policy)
    const std::string v = env::get_string(env::kCudaAttnStages, "");
    return v == "2" ? 2 : v == "3" ? 3 : 0;
  }();
  auto with_stages = [&]<int S>() {
    auto with_warps = [&]<int D>() {
      switch (w) {
        case 1: return launch<D, 1, S>(a, stream);
        case 2: return launch<D, 2, S>(a, stream);
        case 4: return launch<D, 4, S>(a, stream);
        default: return launch<D, 8, S>(a, stream);
      }
    };
    if (a.head_dim == 64) return with_warps.template operator()<64>();
    return with_warps.template operator()<128>();
  };
  if ((forced > 0 ? forced : decode_stages(w)) == 2) return with_stages.template operator()<2>();
  with_stages.template operator()<3>();
}

}  // namespace mpserve::backend::cuda
