// Embedding lookup: token ids -> f32 rows of the residual stream.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace mpserve::backend::cuda {

// out (n, hidden) f32 = table[ids[i]] where table is (vocab, hidden) bf16. An id outside
// [0, vocab) writes NaN so that the fault shows in every later check.
void embed_lookup(const __nv_bfloat16* table, const int32_t* ids, float* out, int n, int hidden, int vocab,
                  cudaStream_t stream);

// ids[pairs[2i]] = prev[pairs[2i + 1]] for i < n: a step's input tokens that the step before it
// sampled on the device (its sampler's output `prev`, still in device memory).
void gather_prev_tokens(int32_t* ids, const int32_t* pairs, const int32_t* prev, int n, cudaStream_t stream);

}  // namespace mpserve::backend::cuda
