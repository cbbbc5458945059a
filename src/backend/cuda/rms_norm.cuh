// RMSNorm fused with the residual add that precedes it.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace mpserve::backend::cuda {

// For each output row r, with s = row_index ? row_index[r] : r:
//   v = residual[s] + (delta ? delta[s] : 0)
//   out[r] = bf16(v * rsqrt(mean(v^2) + eps) * weight)
// and, only when row_index is null, residual[s] = v (the residual stream advances).
// residual, delta: (>= rows, hidden) f32; weight: (hidden) bf16; out: (rows, hidden) bf16.
// note: the gathered form (row_index set) is the final norm of only the sampled positions.
void add_rms_norm(float* residual, const float* delta, const __nv_bfloat16* weight, __nv_bfloat16* out,
                  const int32_t* row_index, int rows, int hidden, float eps, cudaStream_t stream);

}  // namespace mpserve::backend::cuda
