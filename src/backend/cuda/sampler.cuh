// Token sampling on the GPU, drawing the same token as backend::sample_token (sampling.cpp).
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace mpserve::backend::cuda {

// Per sampled row; u = sampling_uniform(seed, counter), computed on the host (it is a pure hash,
// so the host value is bit-identical to the reference's).
struct SampleParamsDev {
  float temperature = 0.f;  // <= 0: greedy
  float top_p = 1.f;
  int32_t top_k = 0;
  float u = 0.f;
};
static_assert(sizeof(SampleParamsDev) == 16);

// logits (rows, vocab) f32 -> out_tokens (rows).
void sample_tokens(const float* logits, const SampleParamsDev* params, int32_t* out_tokens, int rows, int vocab,
                   cudaStream_t stream);

}  // namespace mpserve::backend::cuda

namespace mpserve::backend::cuda {

// Greedy fast path: out_tokens[r] = argmax of row r (ties to the lowest id), in two passes over
// the vocab: kArgmaxChunks blocks per row, then one warp per row over their partials.
constexpr int kArgmaxChunks = 64;
// partial_val, partial_idx: scratch (rows, kArgmaxChunks).
void argmax_rows(const float* logits, float* partial_val, int32_t* partial_idx, int32_t* out_tokens, int rows,
                 int vocab, cudaStream_t stream);

}  // namespace mpserve::backend::cuda
