// Sampling parameters and the reference (CPU) token sampler. Every backend must draw the
// same token as sample_token() for the same logits, params and counter.
#pragma once

#include <cstdint>
#include <span>

namespace mpserve::backend {

struct SamplingParams {
  float temperature = 1.0f;  // 0 = greedy (argmax; ties go to the lowest id)
  float top_p = 1.0f;        // (0, 1]
  int32_t top_k = 0;         // 0 = off
  uint64_t seed = 0;         // per request; the draw for token n uses uniform(seed, n)
  bool greedy() const { return temperature <= 0.0f || top_k == 1; }
};

// Counter-based uniform in [0, 1): a pure function of (seed, counter), so results do not
// depend on batching or on which device draws them.
float sampling_uniform(uint64_t seed, uint64_t counter);

// Draws a token from logits [vocab]: greedy, or softmax(logits / T) restricted to top-k then
// top-p (smallest prefix of the sorted distribution whose mass >= top_p), then inverse-CDF with
// u = sampling_uniform(seed, counter).
int32_t sample_token(std::span<const float> logits, const SamplingParams& p, uint64_t counter);

}  // namespace mpserve::backend
