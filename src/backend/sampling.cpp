// The reference token sampler. The GPU sampler must reproduce this algorithm step by step:
//
// sampling_uniform(seed, counter):
//   mix(z): z += 0x9E3779B97F4A7C15; z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9;
//           z = (z ^ (z >> 27)) * 0x94D049BB133111EB; return z ^ (z >> 31)     (splitmix64)
//   bits = mix(mix(seed) ^ counter)                                            (all uint64)
//   u    = float(bits >> 40) * 2^-24                                           (24-bit mantissa, [0, 1))
//
// sample_token(logits[V], p, counter):
//   1. greedy (T <= 0 or top_k == 1): the argmax; ties go to the lowest id.
//   2. order: ids sorted by (logit descending, id ascending). Candidates are the first
//      k = top_k (0 or >= V: all V) ids of that order.
//   3. weights: m = max logit; e_i = exp((logit_i - m) * (1.0f / T)) in f32, for every candidate.
//   4. top-p (only when top_p < 1): S = sum of e over the candidates; walk the order summing e
//      in f32; keep the smallest prefix whose running sum >= top_p * S (at least one id).
//   5. inverse CDF over the kept ids IN ASCENDING ID ORDER (not sorted order): total = sum of
//      their e in id order; target = u * total with u = sampling_uniform(seed, counter); the
//      token is the first id whose running sum (id order) > target; if rounding leaves none,
//      the last kept id with e > 0.
// note: step 5 walks ids rather than the sorted order so the common case (no top-k, no top-p)
// needs no sort at all; the distribution drawn from is the same either way.
#include "backend/sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "common/check.h"

namespace mpserve::backend {
namespace {

uint64_t splitmix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

int32_t argmax_lowest_id(std::span<const float> logits) {
  int32_t best = 0;
  for (size_t i = 1; i < logits.size(); ++i) {
    if (logits[i] > logits[static_cast<size_t>(best)]) best = static_cast<int32_t>(i);
  }
  return best;
}

}  // namespace

float sampling_uniform(uint64_t seed, uint64_t counter) {
  uint64_t bits = splitmix64(splitmix64(seed) ^ counter);
  return static_cast<float>(bits >> 40) * (1.0f / 16777216.0f);
}

int32_t sample_token(std::span<const float> logits, const SamplingParams& p, uint64_t counter) {
  MPS_CHECK(!logits.empty());
  if (p.greedy()) return argmax_lowest_id(logits);

  const int64_t vocab = static_cast<int64_t>(logits.size());
  const float inv_t = 1.0f / p.temperature;
  const float m = logits[static_cast<size_t>(argmax_lowest_id(logits))];
  const bool use_top_k = p.top_k > 0 && p.top_k < vocab;
  const bool use_top_p = p.top_p < 1.0f;

  // kept[i]: ids that survive top-k and top-p; empty means all ids.
  std::vector<int32_t> kept;
  if (use_top_k || use_top_p) {
    std::vector<int32_t> order(static_cast<size_t>(vocab));
    std::iota(order.begin(), order.end(), 0);
    auto before = [&](int32_t a, int32_t b) {
      float la = logits[static_cast<size_t>(a)], lb = logits[static_cast<size_t>(b)];
      return la > lb || (la == lb && a < b);
    };
    int64_t k = vocab;
    if (use_top_k) {
      k = p.top_k;
      std::partial_sort(order.begin(), order.begin() + k, order.end(), before);
    } else {
      std::sort(order.begin(), order.end(), before);
    }
    int64_t keep = k;
    if (use_top_p) {
      std::vector<float> e(static_cast<size_t>(k));
      float total = 0.0f;
      for (int64_t i = 0; i < k; ++i) {
        e[static_cast<size_t>(i)] = std::exp((logits[static_cast<size_t>(order[static_cast<size_t>(i)])] - m) * inv_t);
        total += e[static_cast<size_t>(i)];
      }
      const float threshold = p.top_p * total;
      float running = 0.0f;
      keep = k;
      for (int64_t i = 0; i < k; ++i) {
        running += e[static_cast<size_t>(i)];
        if (running >= threshold) {
          keep = i + 1;
          break;
        }
      }
    }
    kept.assign(order.begin(), order.begin() + keep);
    std::sort(kept.begin(), kept.end());
  }

  if (kept.empty()) {
    kept.resize(static_cast<size_t>(vocab));
    std::iota(kept.begin(), kept.end(), 0);
  }
  std::vector<float> e(kept.size());
  float total = 0.0f;
  for (size_t i = 0; i < kept.size(); ++i) {
    e[i] = std::exp((logits[static_cast<size_t>(kept[i])] - m) * inv_t);
    total += e[i];
  }
  const float target = sampling_uniform(p.seed, counter) * total;
  float running = 0.0f;
  int32_t last_nonzero = kept.front();
  for (size_t i = 0; i < kept.size(); ++i) {
    running += e[i];
    if (running > target) return kept[i];
    if (e[i] > 0.0f) last_nonzero = kept[i];
  }
  return last_nonzero;
}

}  // namespace mpserve::backend
