// SiLU-and-multiply of the fused gate/up projection.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace mpserve::backend::cuda {

// out (rows, inter) = silu(gate) * up, where gate_up is (rows, 2*inter) = [gate | up]. bf16.
void silu_mul(const __nv_bfloat16* gate_up, __nv_bfloat16* out, int rows, int inter, cudaStream_t stream);

}  // namespace mpserve::backend::cuda
