#include "backend/sampling.h"

#include <gtest/gtest.h>

#include <cmath>
#include <set>
#include <vector>

namespace mpserve::backend {
namespace {

TEST(Sampling, uniform_is_a_pure_function_in_unit_interval) {
  double sum = 0;
  std::set<float> distinct;
  for (uint64_t c = 0; c < 10000; ++c) {
    const float u = sampling_uniform(42, c);
    ASSERT_GE(u, 0.0f);
    ASSERT_LT(u, 1.0f);
    EXPECT_EQ(u, sampling_uniform(42, c));
    sum += u;
    distinct.insert(u);
  }
  EXPECT_NEAR(sum / 10000, 0.5, 0.01);
  EXPECT_GT(distinct.size(), 9990u);
  EXPECT_NE(sampling_uniform(1, 0), sampling_uniform(2, 0));
}

TEST(Sampling, greedy_takes_argmax_and_ties_go_to_lowest_id) {
  const std::vector<float> logits = {1.0f, 3.0f, -2.0f, 3.0f, 2.9f};
  SamplingParams p;
  p.temperature = 0.0f;
  EXPECT_EQ(sample_token(logits, p, 0), 1);
  p.temperature = 1.0f;
  p.top_k = 1;
  for (uint64_t c = 0; c < 50; ++c) EXPECT_EQ(sample_token(logits, p, c), 1);
}

TEST(Sampling, tiny_top_p_is_greedy) {
  const std::vector<float> logits = {0.5f, 0.1f, 0.7f, 0.7f, 0.2f};
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_p = 1e-6f;
  for (uint64_t c = 0; c < 100; ++c) EXPECT_EQ(sample_token(logits, p, c), 2);
}

TEST(Sampling, same_seed_and_counter_give_same_token_and_seeds_differ) {
  std::vector<float> logits(100, 0.0f);  // uniform over 100 ids
  SamplingParams a, b;
  a.seed = 7;
  b.seed = 8;
  int differ = 0;
  for (uint64_t c = 0; c < 200; ++c) {
    EXPECT_EQ(sample_token(logits, a, c), sample_token(logits, a, c));
    differ += sample_token(logits, a, c) != sample_token(logits, b, c);
  }
  EXPECT_GT(differ, 150);
}

// Pearson chi-square of observed counts against expected probabilities.
double chi_square(const std::vector<int>& counts, const std::vector<double>& probs, int n) {
  double chi = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    if (probs[i] == 0) {
      EXPECT_EQ(counts[i], 0) << "id " << i << " has probability 0";
      continue;
    }
    const double e = probs[i] * n;
    chi += (counts[i] - e) * (counts[i] - e) / e;
  }
  return chi;
}

std::vector<int> draw(const std::vector<float>& logits, const SamplingParams& p, int n) {
  std::vector<int> counts(logits.size(), 0);
  for (int c = 0; c < n; ++c) counts[size_t(sample_token(logits, p, uint64_t(c)))]++;
  return counts;
}

TEST(Sampling, draws_follow_softmax_with_temperature) {
  const std::vector<float> logits = {1.0f, 0.2f, -0.5f, 2.0f, 0.0f, 1.5f, -1.0f, 0.7f};
  SamplingParams p;
  p.temperature = 0.7f;
  p.seed = 1234;
  std::vector<double> probs(logits.size());
  double z = 0;
  for (size_t i = 0; i < logits.size(); ++i) z += probs[i] = std::exp(logits[i] / 0.7);
  for (double& x : probs) x /= z;
  const int n = 20000;
  // 7 degrees of freedom: P(chi2 > 24.3) = 0.001.
  EXPECT_LT(chi_square(draw(logits, p, n), probs, n), 24.3);
}

TEST(Sampling, top_k_keeps_only_the_k_largest) {
  const std::vector<float> logits = {0.0f, 2.0f, 1.0f, 2.0f, -1.0f};
  SamplingParams p;
  p.top_k = 2;  // ids 1 and 3 (equal logits)
  p.seed = 5;
  const int n = 20000;
  // 1 degree of freedom: P(chi2 > 10.8) = 0.001.
  EXPECT_LT(chi_square(draw(logits, p, n), {0, 0.5, 0, 0.5, 0}, n), 10.8);
}

TEST(Sampling, top_p_excludes_the_tail) {
  // Probabilities 0.5, 0.3, 0.15, 0.05 (in a shuffled id order).
  const std::vector<float> logits = {std::log(0.15f), std::log(0.5f), std::log(0.05f), std::log(0.3f)};
  SamplingParams p;
  p.top_p = 0.75f;  // 0.5 < 0.75 <= 0.8: keeps the two largest
  p.seed = 99;
  const int n = 20000;
  EXPECT_LT(chi_square(draw(logits, p, n), {0, 0.5 / 0.8, 0, 0.3 / 0.8}, n), 10.8);
  p.top_p = 0.9f;  // 0.8 < 0.9 <= 0.95: keeps three
  EXPECT_LT(chi_square(draw(logits, p, n), {0.15 / 0.95, 0.5 / 0.95, 0, 0.3 / 0.95}, n), 13.8);
}

TEST(Sampling, top_k_then_top_p_renormalises_over_the_top_k) {
  // Probabilities 0.4, 0.3, 0.2, 0.1; top_k=3 renormalises to 4/9, 3/9, 2/9; top_p 0.7 keeps 2.
  const std::vector<float> logits = {std::log(0.1f), std::log(0.4f), std::log(0.3f), std::log(0.2f)};
  SamplingParams p;
  p.top_k = 3;
  p.top_p = 0.7f;
  p.seed = 3;
  const int n = 20000;
  EXPECT_LT(chi_square(draw(logits, p, n), {0, 4.0 / 7, 3.0 / 7, 0}, n), 10.8);
}

}  // namespace
}  // namespace mpserve::backend
