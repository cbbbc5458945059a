// The small-batch GEMV's own kernel and its launch plan; the device code is gemv_body.cuh.
#include <algorithm>
#include <cmath>
#include <map>
#include <mutex>
#include <tuple>

#include "backend/cuda/cuda_check.cuh"
#include "backend/cuda/gemv.cuh"
#include "backend/cuda/gemv_body.cuh"
#include "backend/cuda/pdl.cuh"

namespace mpserve::backend::cuda {
namespace gemv_detail {

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

}  // namespace gemv_detail

namespace {

using namespace gemv_detail;

template <GemvIn IN, GemvOut OUT, int NT>
// note: two blocks per SM (at most 64 registers a thread) for one and two n-tiles: twice the weight
// loads in flight. Four n-tiles (5..8 rows) need ~72 and spill at 64, which measured slower.
__global__ void __launch_bounds__(kMaxWarps * 32, NT == 4 ? 1 : 2) gemv_kernel(GemvArgs a) {
  extern __shared__ __align__(16) unsigned char smem[];
  gemv_body<IN, OUT, NT, false>(a, block_group(), smem, [] {
    pdl_wait();  // x / the residual and y belong to earlier kernels
    // note: trigger only after the wait: triggering first let the next kernels launch (and, being
    // GEMVs, prefetch) in a cascade while the one before this was still running; on an H200 that
    // made 0.5B batch-1/8 decode 5-9% slower than no PDL at all.
    pdl_trigger();
  });
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
      case 1:
        if constexpr (OUT != GemvOut::kSwiGlu) return f.template operator()<IN, OUT, 1>();
        break;
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
  int nt = a.rows >= 5 ? 4 : a.rows >= 3 ? 2 : 1;
  nt = std::max(nt, min_nt);
  auto tiles = [&](int n) { return CEIL_DIV(a.out, swiglu ? 4 * n : 8 * n); };
  while (nt > min_nt && tiles(nt) < sms) nt /= 2;
  if (n_tiles > 0) nt = n_tiles;
  const int u = kLoads / nt;
  const int kblocks = CEIL_DIV(a.in / 8, 4 * u);
  GemvPlan p;
  p.n_tiles = nt;
  p.warps = warps > 0 ? warps : CEIL_DIV(kblocks, CEIL_DIV(kblocks, kMaxWarps));
  CUDA_SHAPE_CHECK(p.warps <= kMaxWarps);
  dispatch(in_mode, out_mode, p.n_tiles, [&]<GemvIn IN, GemvOut OUT, int NT>() { p.grid = grid_for<IN, OUT, NT>(a, p); });
  return p;
}

void gemv_detail::check_args(const GemvArgs& a, GemvIn in_mode, GemvOut out_mode) {
  CUDA_SHAPE_CHECK(a.rows >= 1 && a.rows <= kGemvMaxRows);
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
  check_args(a, in_mode, out_mode);
  GemvPlan p = plan ? *plan : gemv_plan(a, in_mode, out_mode);
  CUDA_SHAPE_CHECK(p.warps >= 1 && p.warps <= kMaxWarps);
  CUDA_SHAPE_CHECK(smem_bytes(in_mode, a.rows, a.in, p.warps, p.n_tiles) <= (220u << 10));
  dispatch(in_mode, out_mode, p.n_tiles, [&]<GemvIn IN, GemvOut OUT, int NT>() { launch<IN, OUT, NT>(a, p, stream); });
}

}  // namespace mpserve::backend::cuda
