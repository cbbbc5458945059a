// Small-batch linear layers (decode, rows <= 8): y (rows, out) = x (rows, in) . W^T with W (out, in)
// bf16 row-major, streaming W once at memory bandwidth. Fused prologue (RMSNorm of the f32
// residual) and epilogues (f32/bf16 store, residual add, SwiGLU) remove the small kernels that sit
// between the GEMMs of a decoder layer. Launched with programmatic dependent launch (pdl.cuh): the
// first weight loads are issued before the kernel waits for its predecessor.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "backend/cuda/qkv_rope.cuh"

namespace mpserve::backend::cuda {

constexpr int kGemvMaxRows = 8;

enum class GemvIn {
  kBf16,     // x: bf16 (rows, in), read from global memory
  kRmsNorm,  // x = bf16(residual * rsqrt(mean(residual^2) + eps) * norm_w); residual f32 (rows, in)
};

enum class GemvOut {
  kF32,     // y f32 (rows, out)
  kBf16,    // y bf16 (rows, out)
  kAddF32,  // y f32 (rows, out) += x . W^T (the residual stream; one writer per element)
  kSwiGlu,  // W (2*out, in) = [gate; up]: y bf16 (rows, out) = silu(x.gate^T) * (x.up^T)
  // W the qkv weight (Q + 2K, in), q and k rows in the RoPE pair layout (qkv_rope.cuh); y unused.
  // What qkv_rope_cache_write does with the projection, per row r: + bias, RoPE on q and k, q to
  // rope.q_out (bf16), k and v to the paged cache at rope.slot_mapping[r] (< 0: not written).
  // Without per-head q/k RMSNorm (rope.q_norm / k_norm null): a head spans several blocks' tiles.
  kQkvRope,
};

struct GemvArgs {
  const void* x = nullptr;                // bf16 (rows, in) or f32 residual (rows, in), see GemvIn
  const __nv_bfloat16* norm_w = nullptr;  // (in), kRmsNorm only
  float eps = 0.f;
  const __nv_bfloat16* w = nullptr;       // (out, in), or (2*out, in) for kSwiGlu
  void* y = nullptr;                      // see GemvOut
  int rows = 0;                           // 1..kGemvMaxRows (mma_linear: 1..kMmaLinearMaxRows)
  int in = 0;                             // multiple of 8
  int out = 0;                            // multiple of 2
  QkvRopeArgs rope;                       // kQkvRope only; rope.qkv unused (the GEMV's own output)
  __nv_bfloat16* x_norm = nullptr;        // mma_linear with kRmsNorm only: bf16 (rows, in) scratch
};

// How one launch splits the work (gemv_plan picks it from the shape; the benchmark may force one).
// A tile is 8 * n_tiles weight rows (kSwiGlu: 4 * n_tiles outputs, half gate rows, half up rows);
// the `warps` warps of a block split `in` and reduce in shared memory; `grid` blocks loop over
// the tiles.
struct GemvPlan {
  int n_tiles = 0;  // 1, 2 or 4 (kSwiGlu, one n-tile: rows 0..3 gate, 4..7 up)
  int warps = 0;    // 1..16
  int grid = 0;     // filled in by gemv_plan / gemv
};

// n_tiles / warps > 0 force those values (benchmark sweeps); the grid is always filled in.
GemvPlan gemv_plan(const GemvArgs& a, GemvIn in_mode, GemvOut out_mode, int n_tiles = 0, int warps = 0);

// plan: nullptr = gemv_plan's choice; a plan with grid 0 gets its grid computed.
void gemv(const GemvArgs& a, GemvIn in_mode, GemvOut out_mode, cudaStream_t stream,
          const GemvPlan* plan = nullptr);

// Launch helpers shared by the decode-linear kernels (gemv.cu, mma_linear.cu).
// The current device's SM count (cached: one device per process, the backend's).
int device_sms();
// Blocks of `kernel` resident per SM at (threads, smem); raises the kernel's dynamic shared
// memory limit first when needed. Cached per (kernel, threads, smem).
int resident_blocks(const void* kernel, int threads, size_t smem);
// Checks a launch's arguments against the modes (CUDA_SHAPE_CHECK), rows against 1..max_rows.
void check_linear_args(const GemvArgs& a, GemvIn in_mode, GemvOut out_mode, int max_rows);

}  // namespace mpserve::backend::cuda
