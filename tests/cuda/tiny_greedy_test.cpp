// Greedy decoding on the `tiny` model (the embedded default: hidden 256, 4 layers, vocab 151936),
// CUDA against the CPU reference: the issue's check "greedy tokens identical to the CPU backend for
// 64 tokens on tiny", asserted exactly. Since weights v3 tiny's greedy choice has a clear margin
// (make-model's plan_tensors note; CPU top-2 gap p1 ~2, tests/model/tiny_margin_test.cpp), far
// above what bf16 activations move a logit difference (~0.02 p50, ~0.07 p99). On v2 (logits ~N(0,
// 2^2), no planted winner) 2.5% of tokens flipped at near-ties. A failure prints each differing
// step's margins and logit error, which tells a kernel error (large error, or a flip the error
// cannot explain) from a near-tie (a sign the model lost its margin).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>

#include "backend/backend.h"
#include "backend/cuda/kernel_test_api.h"
#include "backend/sampling.h"
#include "cuda/cuda_test_util.h"
#include "cuda/tiny_model.h"

namespace mpserve {
namespace {

using backend::Batch;
using backend::BatchEntry;
using backend::StepOutput;
using cuda_test::Seq;

constexpr double kLogitTol = 2e-2;  // normalized logit error, as in backend_test.cpp
constexpr int kSteps = 64;

struct Top2 {
  int32_t first = 0, second = 0;
  float margin = 0;  // logit[first] - logit[second]
};

Top2 top2(std::span<const float> x) {
  Top2 t;
  t.first = backend::sample_token(x, backend::SamplingParams{0.f, 1.f, 0, 0}, 0);  // greedy: lowest id on ties
  float best = -INFINITY;
  for (size_t i = 0; i < x.size(); ++i) {
    if (int32_t(i) != t.first && x[i] > best) best = x[i], t.second = int32_t(i);
  }
  t.margin = x[size_t(t.first)] - best;
  return t;
}

double max_abs_err(std::span<const float> a, std::span<const float> b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(double(a[i]) - b[i]));
  return m;
}

backend::BackendOptions options(backend::Device d) {
  backend::BackendOptions o;
  o.device = d;
  o.block_size = 16;
  o.max_num_seqs = 8;
  o.max_num_batched_tokens = 512;
  o.max_model_len = 4096;  // as `mpserve generate` defaults to: the decode partition sizes follow it
  o.num_threads = 0;
  o.cpu_kv_cache_bytes = int64_t{256} << 20;
  o.gpu_memory_fraction = 0.3;
  return o;
}

Seq make_seq(int index, int prompt_len, uint32_t seed) {
  Seq s;
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> tok(0, 151642);  // ordinary (non-special) ids
  for (int i = 0; i < prompt_len; ++i) s.tokens.push_back(tok(rng));
  for (int b = 0; b < 16; ++b) s.table.push_back(index * 16 + b);
  return s;
}

BatchEntry entry(const Seq& s, int id) {
  BatchEntry e;
  e.seq_id = id;
  e.context_len = s.cached;
  e.tokens = std::span<const int32_t>(s.tokens.data() + s.cached, s.tokens.size() - size_t(s.cached));
  e.block_table = s.table;
  e.sample = true;
  e.sampling.temperature = 0.f;
  e.num_generated = 0;
  return e;
}

class TinyGreedyTest : public cuda_test::TinyModelGpuTest {
 protected:
  void SetUp() override {
    TinyModelGpuTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    auto c = backend::make_backend(*w_, options(backend::Device::kCpu));
    auto g = backend::make_backend(*w_, options(backend::Device::kCuda));
    ASSERT_TRUE(c.is_ok() && g.is_ok()) << c.error() << g.error();
    cpu_ = std::move(c).value();
    gpu_ = std::move(g).value();
  }
  std::unique_ptr<backend::Backend> cpu_, gpu_;
};

// 8 prompts decoded together for 64 steps, both backends fed the CPU's greedy tokens: at every
// step the logits agree within the end-to-end tolerance, the GPU's token is the argmax of its own
// logits, and the two argmaxes are identical at all 512 rows.
TEST_F(TinyGreedyTest, teacher_forced_argmax_identical_at_every_step) {
  const int V = int(w_->config.vocab_size);
  std::vector<Seq> seqs;
  for (int i = 0; i < 8; ++i) seqs.push_back(make_seq(i, 12 + 3 * i, 1000u + uint32_t(i)));
  int flips = 0, samples = 0, unexplained = 0;
  std::vector<float> margins, errs, margin_errs;
  double worst_rel = 0;
  for (int step = 0; step < kSteps; ++step) {
    Batch b;
    for (int i = 0; i < 8; ++i) b.entries.push_back(entry(seqs[size_t(i)], i));
    StepOutput oc, og;
    cpu_->step(b, true, &oc);
    gpu_->step(b, true, &og);
    ASSERT_EQ(og.logits.size(), oc.logits.size());
    const double rel = cuda_test::rel_err(og.logits, oc.logits);
    worst_rel = std::max(worst_rel, rel);
    EXPECT_LT(rel, kLogitTol) << "step " << step;
    for (int i = 0; i < 8; ++i) {
      std::span<const float> lc(oc.logits.data() + size_t(i) * size_t(V), size_t(V));
      std::span<const float> lg(og.logits.data() + size_t(i) * size_t(V), size_t(V));
      const Top2 tc = top2(lc), tg = top2(lg);
      EXPECT_EQ(og.tokens[size_t(i)], tg.first) << "GPU argmax kernel vs its own logits, step " << step;
      const double err = max_abs_err(lg, lc);
      // How far the GPU moved the CPU's top-2 difference.
      const double merr = (lg[size_t(tc.first)] - lg[size_t(tc.second)]) - tc.margin;
      margins.push_back(tc.margin), errs.push_back(float(err)), margin_errs.push_back(float(std::fabs(merr)));
      ++samples;
      if (tg.first != tc.first) {
        ++flips;
        const bool tie = tc.margin <= 2 * err;
        unexplained += tie ? 0 : 1;
        std::printf("TINY flip step=%d seq=%d cpu=%d(margin %.4f) gpu=%d(margin %.4f) max_abs_err=%.4f "
                    "cpu_top2_diff_on_gpu=%.4f rel_err=%.4g %s\n",
                    step, i, tc.first, tc.margin, tg.first, tg.margin, err, tc.margin + merr, rel,
                    tie ? "near-tie" : "NOT A TIE");
      }
      seqs[size_t(i)].cached = int32_t(seqs[size_t(i)].tokens.size());
      seqs[size_t(i)].tokens.push_back(oc.tokens[size_t(i)]);
    }
  }
  auto quantile = [](std::vector<float> v, double q) {
    std::sort(v.begin(), v.end());
    return v[std::min(v.size() - 1, size_t(q * double(v.size())))];
  };
  int close = 0;
  const float err_p50 = quantile(errs, 0.5);
  for (float m : margins) close += m <= 2 * err_p50 ? 1 : 0;
  std::printf("TINY teacher-forced: samples=%d flips=%d unexplained=%d worst_rel_err=%.4g | max_abs_err p50=%.4f "
              "p99=%.4f max=%.4f | top2-diff error p50=%.4f p99=%.4f | cpu margin p10=%.4f p50=%.4f | "
              "samples with margin <= 2*p50(err): %d (%.1f%%)\n",
              samples, flips, unexplained, worst_rel, err_p50, quantile(errs, 0.99), quantile(errs, 1.0),
              quantile(margin_errs, 0.5), quantile(margin_errs, 0.99), quantile(margins, 0.1),
              quantile(margins, 0.5), close, 100.0 * close / samples);
  EXPECT_EQ(unexplained, 0) << "argmax flips that the step's logit error cannot explain: a kernel bug";
  EXPECT_EQ(flips, 0) << "argmaxes differ at " << flips << " of " << samples << " rows (TINY flip lines above: "
                      << "'near-tie' means the CPU's margin is within twice the step's logit error, i.e. tiny "
                      << "lost its margin; 'NOT A TIE' means a kernel error)";
}

// Batch 1, as `mpserve generate` runs it: each backend feeds back its own tokens for 64 steps, and
// all 64 are identical. A difference prints the first differing step's margins and logit error
// (both backends saw the same context up to there). Prompts 0-3 are tools/gpu/greedy_compare.sh's
// (Qwen token ids), 4-7 random.
TEST_F(TinyGreedyTest, free_running_64_greedy_tokens_identical) {
  const int V = int(w_->config.vocab_size);
  const std::vector<std::vector<int32_t>> text_prompts = {
      {785, 3974, 13876, 38835},       // "The quick brown fox"
      {12522, 5193, 264, 882},         // "Once upon a time"
      {750, 75698, 1445, 1648},        // "def fibonacci(n):"
      {785, 6722, 315, 9625, 374}};    // "The capital of France is"
  for (uint32_t prompt = 0; prompt < 8; ++prompt) {
    std::vector<std::vector<int32_t>> toks(2);
    std::vector<std::vector<float>> logits(2);
    for (int d = 0; d < 2; ++d) {
      backend::Backend& be = d == 0 ? *cpu_ : *gpu_;
      Seq s = make_seq(0, 6 + int(prompt), 2000u + prompt);
      if (prompt < text_prompts.size()) s.tokens = text_prompts[prompt];
      for (int step = 0; step < kSteps; ++step) {
        Batch b;
        b.entries.push_back(entry(s, 0));
        StepOutput o;
        be.step(b, true, &o);
        s.cached = int32_t(s.tokens.size());
        s.tokens.push_back(o.tokens[0]);
        toks[size_t(d)].push_back(o.tokens[0]);
        logits[size_t(d)].insert(logits[size_t(d)].end(), o.logits.begin(), o.logits.end());
      }
    }
    int first_diff = -1;
    for (int i = 0; i < kSteps && first_diff < 0; ++i)
      if (toks[0][size_t(i)] != toks[1][size_t(i)]) first_diff = i;
    if (first_diff < 0) {
      std::printf("TINY free-running prompt=%u: %d/%d tokens identical\n", prompt, kSteps, kSteps);
      continue;
    }
    std::span<const float> lc(logits[0].data() + size_t(first_diff) * size_t(V), size_t(V));
    std::span<const float> lg(logits[1].data() + size_t(first_diff) * size_t(V), size_t(V));
    const Top2 tc = top2(lc), tg = top2(lg);
    const double err = max_abs_err(lg, lc);
    std::printf("TINY free-running prompt=%u: first difference at token %d: cpu=%d (top-2 margin %.4f, 2nd=%d) "
                "gpu=%d (margin %.4f) max_abs_err=%.4f rel_err=%.4g\n",
                prompt, first_diff, tc.first, tc.margin, tc.second, tg.first, tg.margin, err,
                cuda_test::rel_err(std::vector<float>(lg.begin(), lg.end()), std::vector<float>(lc.begin(), lc.end())));
    const bool tie = tc.margin <= 2 * err;
    ADD_FAILURE() << "prompt " << prompt << ": " << first_diff << "/" << kSteps << " greedy tokens identical; at token "
                  << first_diff << " the CPU's top-2 margin is " << tc.margin << " and the max logit error " << err
                  << (tie ? ": a near-tie (tiny lost its margin)" : ": NOT A TIE (a kernel error)");
  }
}

}  // namespace
}  // namespace mpserve
