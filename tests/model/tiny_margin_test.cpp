// The greedy margin of `tiny` (make-model, seed 0: the embedded default) on the CPU reference.
// The check "greedy tokens identical CPU vs CUDA for 64 tokens" needs the top-1 token to
// stand clear of the top-2 by much more than bf16 activations move a logit difference (~0.02 p50,
// ~0.07 p99, docs/results/cuda_backend.md "Tiny greedy"), while generations stay varied. This test
// measures that over 8 prompts x 64 greedy steps and prints one parseable line.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <set>

#include "backend/backend.h"
#include "model/model_test_util.h"
#include "model/model_writer.h"
#include "model/weights.h"
#include "tokenizer/tokenizer.h"

namespace mpserve::model {
namespace {

constexpr int kSteps = 64;

const std::vector<std::string> kPrompts = {
    "The quick brown fox", "Once upon a time", "def fibonacci(n):", "The capital of France is",
    "Москва — столица России.", "東京は日本の首都です。", "1, 2, 3, 4,", "<html><body>",
};

struct Row {
  float gap = 0;       // top-1 minus top-2 logit
  float p_top = 0;     // softmax probability of the top-1 token
  bool finite = true;  // every logit finite
};

Row analyse(std::span<const float> x) {
  Row r;
  float a = -INFINITY, b = -INFINITY;
  for (float v : x) {
    r.finite = r.finite && std::isfinite(v);
    if (v > a) {
      b = a, a = v;
    } else if (v > b) {
      b = v;
    }
  }
  double z = 0;
  for (float v : x) z += std::exp(double(v) - a);
  r.gap = a - b;
  r.p_top = float(1.0 / z);
  return r;
}

float quantile(std::vector<float> v, double q) {
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, size_t(q * double(v.size())))];
}

TEST(TinyModel, greedy_choice_has_a_clear_margin_and_generations_vary) {
  testing::TempDir dir;
  MakeModelOptions o;
  o.shape = "tiny";
  o.seed = 0;
  o.out_dir = dir.path();
  ASSERT_TRUE(make_model(o).is_ok());
  auto w = load_model(dir.path());
  ASSERT_TRUE(w.is_ok()) << w.error();
  auto tok = tokenizer::Tokenizer::load(dir.path());
  ASSERT_TRUE(tok.is_ok()) << tok.error();
  backend::BackendOptions bo;
  bo.max_num_seqs = 8;
  bo.max_num_batched_tokens = 512;
  bo.max_model_len = 256;
  auto be = backend::make_backend(**w, bo);
  ASSERT_TRUE(be.is_ok()) << be.error();
  const size_t V = size_t((*w)->config.vocab_size);

  const size_t n = kPrompts.size();
  std::vector<std::vector<int32_t>> seqs(n), tables(n);
  std::vector<int32_t> cached(n, 0);
  for (size_t i = 0; i < n; ++i) {
    seqs[i] = (*tok)->encode(kPrompts[i]);
    for (int32_t b = 0; b < 8; ++b) tables[i].push_back(int32_t(i) * 8 + b);  // 128 tokens each
  }
  std::vector<Row> rows;
  for (int step = 0; step < kSteps; ++step) {
    backend::Batch batch;
    for (size_t i = 0; i < n; ++i) {
      backend::BatchEntry e;
      e.seq_id = int64_t(i);
      e.context_len = cached[i];
      e.tokens = std::span<const int32_t>(seqs[i].data() + cached[i], seqs[i].size() - size_t(cached[i]));
      e.block_table = tables[i];
      e.sample = true;
      e.sampling.temperature = 0;
      batch.entries.push_back(e);
    }
    backend::StepOutput out;
    (*be)->step(batch, true, &out);
    ASSERT_EQ(out.logits.size(), n * V);
    for (size_t i = 0; i < n; ++i) {
      rows.push_back(analyse(std::span<const float>(out.logits.data() + i * V, V)));
      cached[i] = int32_t(seqs[i].size());
      seqs[i].push_back(out.tokens[i]);
    }
  }

  std::vector<float> gaps, p_top;
  bool finite = true;
  for (const Row& r : rows) gaps.push_back(r.gap), p_top.push_back(r.p_top), finite = finite && r.finite;
  // Variety: distinct tokens per generation, the longest run of one token, distinct generations.
  size_t min_distinct = SIZE_MAX, longest_run = 0;
  std::set<std::vector<int32_t>> generations;
  for (size_t i = 0; i < n; ++i) {
    std::vector<int32_t> gen(seqs[i].end() - kSteps, seqs[i].end());
    min_distinct = std::min(min_distinct, std::set<int32_t>(gen.begin(), gen.end()).size());
    size_t run = 1;
    for (size_t k = 1; k < gen.size(); ++k) longest_run = std::max(longest_run, run = gen[k] == gen[k - 1] ? run + 1 : 1);
    generations.insert(gen);
  }
  std::printf("TINY margin: rows=%zu gap p1=%.3f p10=%.3f p50=%.3f min=%.3f | p_top p10=%.3f p50=%.3f p90=%.3f | "
              "distinct tokens per 64 >= %zu, longest run %zu, distinct generations %zu/%zu\n",
              rows.size(), quantile(gaps, 0.01), quantile(gaps, 0.1), quantile(gaps, 0.5), quantile(gaps, 0.0),
              quantile(p_top, 0.1), quantile(p_top, 0.5), quantile(p_top, 0.9), min_distinct, longest_run,
              generations.size(), n);
  EXPECT_TRUE(finite);
  // bf16 activations move a logit difference by up to ~0.07 (p99), 0.16 at most seen on tiny;
  // measured here (weights v3): gap min 0.37, p1 2.1, p50 6.6. The bounds leave room for a change
  // of threads or summation order, not for a return to near-ties (p1 0.010, p50 0.33 on v2).
  EXPECT_GE(quantile(gaps, 0.0), 0.2);
  EXPECT_GE(quantile(gaps, 0.01), 1.0);
  EXPECT_GE(quantile(gaps, 0.5), 3.0);
  // Peaked but not one-hot (measured p50 0.83): sampling at temperature 1 still varies.
  EXPECT_LT(quantile(p_top, 0.5), 0.95);
  EXPECT_GE(min_distinct, size_t(kSteps / 2));
  EXPECT_LE(longest_run, size_t(3));
  EXPECT_EQ(generations.size(), n);
}

}  // namespace
}  // namespace mpserve::model
