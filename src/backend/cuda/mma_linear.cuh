// Decode linears at 9..64 rows (batch 9..64): y (rows, out) = x (rows, in) . W^T with the small
// GEMV's prologues and epilogues (gemv.cuh: GemvArgs, GemvIn, GemvOut), on tensor cores with
// every weight read once. Replaces, on that path, cuBLASLt plus the separate SiLU, RoPE and
// residual-add kernels: cuBLASLt at M = 64 has a ~7 us floor per 2 MB matrix, runs narrow
// matrices on 37-64 CTAs, and never starts early under PDL (docs/results/cuda_backend.md).
//
// A block computes a (rows padded to 16) x BN tile of y over a run of `in`; the `split` blocks
// of a tile form a thread-block cluster along `in` and add their partial tiles through
// distributed shared memory in a fixed order, so each output has one writer and the result is
// deterministic. kRmsNorm first launches rms_norm into a.x_norm (bf16 (rows, in) scratch).
#pragma once

#include <cuda_runtime.h>

#include "backend/cuda/gemv.cuh"

namespace mpserve::backend::cuda {

constexpr int kMmaLinearMaxRows = 64;

struct MmaLinearPlan {
  int bn = 0;     // 64 or 128 weight rows per tile (kSwiGlu: half gate, half up rows)
  int split = 0;  // blocks (cluster size, 1..8) that share a tile's `in`
  int grid = 0;   // tiles * split
  bool wgmma = false;  // 33..64 rows with 128-row tiles: the wgmma kernel (64 batch rows = its M)
};

// bn / split > 0 force those values (tests, benchmark sweeps); split is capped at the number of
// 64-wide steps along `in`. Above 32 rows, 128-row tiles run on wgmma, 64-row ones on mma.sync.
MmaLinearPlan mma_linear_plan(const GemvArgs& a, GemvOut out_mode, int bn = 0, int split = 0);

// plan: nullptr = mma_linear_plan's choice.
void mma_linear(const GemvArgs& a, GemvIn in_mode, GemvOut out_mode, cudaStream_t stream,
                const MmaLinearPlan* plan = nullptr);

}  // namespace mpserve::backend::cuda
