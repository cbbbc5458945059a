// SiLU-and-multiply of the fused gate/up projection.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace mpserve::backend::cuda {

// out (rows, inter) = silu(gate) * up, where gate_up is (rows, 2*inter) = [gate | up]. bf16.
void silu_mul(const __nv_bfloat16* gate_up, __nv_bfloat16* out, int rows, int inter, cudaStream_t stream);

#ifdef __CUDACC__
// silu(g) * u for two outputs, rounded to bf16: what the SiLU kernels and the linears' fused SwiGLU
// epilogue (linear_epilogue.cuh) compute, in one place so that both paths round alike.
__device__ __forceinline__ __nv_bfloat162 swiglu2(float2 g, float2 u) {
  return __floats2bfloat162_rn(g.x / (1.f + expf(-g.x)) * u.x, g.y / (1.f + expf(-g.y)) * u.y);
}
#endif

}  // namespace mpserve::backend::cuda
