// The card's two ceilings for bench offline: copy bandwidth and bf16 GEMM rate, measured with
// device events on the caller's stream.
#pragma once

#include <cuda_runtime.h>

#include "backend/cuda/gemm.h"

namespace mpserve::backend::cuda {

// (bytes read + bytes written) / time of a device-to-device copy of a 1 GiB buffer, median of 10.
// Returns a negative value when the buffers cannot be allocated.
double measure_copy_gb_s(cudaStream_t stream);

// 2*n^3 / time of an n x n x n bf16 GEMM (f32 accumulate, bf16 out, random operands, n = 8192)
// through `gemm`, median of 10. Negative when the buffers cannot be allocated.
double measure_gemm_tflops(Gemm& gemm, cudaStream_t stream);

}  // namespace mpserve::backend::cuda
