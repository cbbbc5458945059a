// Small-batch linear layers (decode, rows <= 8): y (rows, out) = x (rows, in) . W^T with W (out, in)
// bf16 row-major, streaming W once at memory bandwidth. Fused prologue (RMSNorm of the f32
// residual) and epilogues (f32/bf16 store, residual add, SwiGLU) remove the small kernels that sit
// between the GEMMs of a decoder layer.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

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
};

struct GemvArgs {
  const void* x = nullptr;                // bf16 (rows, in) or f32 residual (rows, in), see GemvIn
  const __nv_bfloat16* norm_w = nullptr;  // (in), kRmsNorm only
  float eps = 0.f;
  const __nv_bfloat16* w = nullptr;       // (out, in), or (2*out, in) for kSwiGlu
  void* y = nullptr;                      // see GemvOut
  int rows = 0;                           // 1..kGemvMaxRows
  int in = 0;                             // multiple of 8
  int out = 0;                            // multiple of 2
};

void gemv(const GemvArgs& a, GemvIn in_mode, GemvOut out_mode, cudaStream_t stream);

}  // namespace mpserve::backend::cuda
