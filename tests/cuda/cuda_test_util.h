// Helpers for the CUDA tests: random inputs, bf16 rounding, normalized error.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "common/half.h"
#include "model/tensor.h"

namespace mpserve::cuda_test {

inline std::vector<float> random_vec(size_t n, std::mt19937& rng, float scale = 1.f) {
  std::normal_distribution<float> d(0.f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

inline std::vector<float> round_bf16(std::vector<float> v) {
  for (float& x : v) x = bf16_to_f32(f32_to_bf16(x));
  return v;
}

// ||a - b|| / ||b||; any NaN (an unwritten, poisoned output) gives infinity.
inline double rel_err(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return INFINITY;
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(a[i]) || std::isnan(b[i])) return INFINITY;
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

// An f32 TensorView over a host vector (the CPU reference ops read any dtype).
inline model::TensorView f32_view(const std::vector<float>& v, std::vector<int64_t> shape) {
  model::TensorView t;
  t.name = "test";
  t.dtype = model::DType::kF32;
  t.shape = std::move(shape);
  t.data = v.data();
  t.nbytes = v.size() * sizeof(float);
  return t;
}

// A sequence a test drives through a backend by hand: its tokens so far, how many of them the KV
// cache holds, and its block table.
struct Seq {
  std::vector<int32_t> tokens;
  int32_t cached = 0;
  std::vector<int32_t> table;
};

}  // namespace mpserve::cuda_test
