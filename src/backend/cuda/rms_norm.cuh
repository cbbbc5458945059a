// RMSNorm of the f32 residual stream into the bf16 input of the next linear. The residual adds
// themselves happen in the linears' epilogues (the GEMV and tensor-core linears' kAddF32,
// cuBLASLt's beta = 1), so the norm only reads the residual.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace mpserve::backend::cuda {

// For each output row r, with s = row_index ? row_index[r] : r:
//   out[r] = bf16(x[s] * rsqrt(mean(x[s]^2) + eps) * weight)
// x: (>= rows, hidden) f32; weight: (hidden) bf16; out: (rows, hidden) bf16.
// note: the gathered form (row_index set) is the final norm of only the sampled positions.
// early: let the next kernel launch (pdl_trigger) as this one starts instead of after its wait
// for the previous kernel, so the next kernel's weight prefetch overlaps the previous kernel too.
// Whether that pays depends on the next kernel and the model (mma_linear() chooses, and says what
// was measured).
void rms_norm(const float* x, const __nv_bfloat16* weight, __nv_bfloat16* out, const int32_t* row_index, int rows,
              int hidden, float eps, cudaStream_t stream, bool early = false);

}  // namespace mpserve::backend::cuda
