// The CPU backend against an independent dense forward pass, and against itself under every
// way the scheduler may split and batch one sequence.
#include "backend/cpu/cpu_backend.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <string>
#include <vector>

#include "backend/test_model.h"

namespace mpserve::backend {
namespace {

using testing::make_test_model;
using testing::normalized_error;
using testing::reference_forward;
using testing::TestModelSpec;

constexpr int kBlockSize = 4;

BackendOptions small_options(Ablation ablation = Ablation::kNone) {
  BackendOptions o;
  o.block_size = kBlockSize;
  o.max_num_seqs = 8;
  o.max_num_batched_tokens = 64;
  o.max_model_len = 64;
  o.num_threads = 3;
  o.ablation = ablation;
  return o;
}

std::unique_ptr<Backend> make(const model::ModelWeights& w, const BackendOptions& o) {
  auto r = cpu::make_cpu_backend(w, o);
  EXPECT_TRUE(r.is_ok()) << r.error();
  return std::move(r).value();
}

std::vector<float> row(const std::vector<float>& m, int64_t r, int64_t width) {
  return std::vector<float>(m.begin() + r * width, m.begin() + (r + 1) * width);
}

// One sequence to feed through the backend.
struct Seq {
  int64_t id = 0;
  std::vector<int32_t> tokens;
  std::vector<int32_t> blocks;  // scattered block ids
  int32_t done = 0;             // tokens already in the KV cache
};

// One step: for each (seq, n) runs the next n tokens of seq, sampling greedily after them when
// n > 0. Returns each sampled entry's logits, keyed by (seq id, position of its last token).
std::map<std::pair<int64_t, int32_t>, std::vector<float>> run_step(Backend& be,
                                                                   std::vector<std::pair<Seq*, int32_t>> parts) {
  Batch batch;
  for (auto& [s, n] : parts) {
    BatchEntry e;
    e.seq_id = s->id;
    e.context_len = s->done;
    e.tokens = std::span<const int32_t>(s->tokens).subspan(size_t(s->done), size_t(n));
    e.block_table = s->blocks;
    e.sample = n > 0;
    e.sampling.temperature = 0.0f;
    batch.entries.push_back(e);
  }
  StepOutput out;
  be.step(batch, true, &out);
  const int64_t vocab = be.config().vocab_size;
  std::map<std::pair<int64_t, int32_t>, std::vector<float>> result;
  size_t sampled = 0;
  for (auto& [s, n] : parts) {
    s->done += n;
    if (n == 0) continue;
    EXPECT_LT(sampled, out.tokens.size());
    if (sampled >= out.tokens.size()) break;
    auto l = row(out.logits, int64_t(sampled), vocab);
    // Greedy sampling returned the argmax of the logits it reports.
    EXPECT_EQ(out.tokens[sampled], int32_t(std::max_element(l.begin(), l.end()) - l.begin()));
    result[{s->id, s->done - 1}] = std::move(l);
    ++sampled;
  }
  EXPECT_EQ(out.tokens.size(), sampled);
  EXPECT_EQ(out.logits.size(), sampled * size_t(vocab));
  return result;
}

// Runs seq alone in chunks of `chunk` tokens; logits at the end of each chunk by position.
std::map<int32_t, std::vector<float>> run_chunked(Backend& be, Seq seq, int32_t chunk) {
  std::map<int32_t, std::vector<float>> result;
  while (seq.done < int32_t(seq.tokens.size())) {
    const int32_t n = std::min<int32_t>(chunk, int32_t(seq.tokens.size()) - seq.done);
    for (auto& [key, l] : run_step(be, {{&seq, n}})) result[key.second] = l;
  }
  return result;
}

Seq target_sequence(int64_t vocab) {
  Seq s;
  s.id = 1;
  for (int i = 0; i < 13; ++i) s.tokens.push_back(int32_t((i * 37 + 5) % vocab));
  s.blocks = {37, 3, 100, 18};  // 13 tokens: 4 blocks of 4, the last partly used
  return s;
}

struct Case {
  std::string name;
  TestModelSpec spec;
};
void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

std::vector<Case> cases() {
  std::vector<Case> c;
  TestModelSpec s;
  s.arch = model::Arch::kQwen2;
  c.push_back({"qwen2_f32_untied", s});
  s.dtype = model::DType::kBF16;
  s.norm_dtype = model::DType::kBF16;
  s.embed_dtype = model::DType::kBF16;
  s.tied = true;
  s.seed = 2;
  c.push_back({"qwen2_bf16_tied", s});
  s = TestModelSpec{};
  s.arch = model::Arch::kLlama;
  s.dtype = model::DType::kBF16;
  s.norm_dtype = model::DType::kF32;
  s.embed_dtype = model::DType::kF16;
  s.heads = 4;
  s.kv_heads = 1;
  s.seed = 3;
  c.push_back({"llama3_scaled_rope_mixed_dtypes", s});
  s = TestModelSpec{};
  s.arch = model::Arch::kQwen3;
  s.dtype = model::DType::kF16;
  s.norm_dtype = model::DType::kBF16;
  s.embed_dtype = model::DType::kF16;
  s.tied = true;
  s.heads = 6;
  s.kv_heads = 3;
  s.head_dim = 8;  // q_dim 48 > hidden 40
  s.seed = 4;
  c.push_back({"qwen3_qk_norm_f16_tied", s});
  return c;
}

class CpuBackendModels : public ::testing::TestWithParam<Case> {};

TEST_P(CpuBackendModels, token_by_token_logits_match_dense_reference_forward) {
  auto m = make_test_model(GetParam().spec);
  auto be = make(m->weights, small_options());
  const Seq seq = target_sequence(m->weights.config.vocab_size);
  const int64_t vocab = m->weights.config.vocab_size;
  const auto want = reference_forward(m->weights, seq.tokens);
  const auto got = run_chunked(*be, seq, 1);
  ASSERT_EQ(got.size(), seq.tokens.size());
  for (auto& [pos, l] : got) EXPECT_LT(normalized_error(l, row(want, pos, vocab)), 1e-4) << "position " << pos;
}

TEST_P(CpuBackendModels, prefill_chunks_tokens_and_batching_give_the_same_logits) {
  auto m = make_test_model(GetParam().spec);
  const int64_t vocab = m->weights.config.vocab_size;
  const Seq seq = target_sequence(vocab);
  const int32_t last = int32_t(seq.tokens.size()) - 1;

  auto be = make(m->weights, small_options());
  const auto by_token = run_chunked(*be, seq, 1);
  const auto whole = run_chunked(*be, seq, 64);
  ASSERT_EQ(whole.size(), 1u);
  EXPECT_LT(normalized_error(whole.at(last), by_token.at(last)), 1e-4);
  const auto by_3 = run_chunked(*be, seq, 3);
  ASSERT_EQ(by_3.size(), 5u);
  for (auto& [pos, l] : by_3) EXPECT_LT(normalized_error(l, by_token.at(pos)), 1e-4) << "position " << pos;

  // The same sequence batched with two others, in a fresh backend whose blocks those others use too.
  auto be2 = make(m->weights, small_options());
  Seq x = seq, a, b;
  a.id = 2;
  b.id = 3;
  for (int i = 0; i < 11; ++i) a.tokens.push_back(int32_t((i * 11 + 2) % vocab));
  for (int i = 0; i < 7; ++i) b.tokens.push_back(int32_t((i * 5 + 40) % vocab));
  a.blocks = {4, 36, 1};
  b.blocks = {38, 0};
  std::map<std::pair<int64_t, int32_t>, std::vector<float>> got;
  auto add = [&](auto r) { got.insert(r.begin(), r.end()); };
  add(run_step(*be2, {{&a, 5}, {&x, 4}, {&b, 1}}));
  add(run_step(*be2, {{&b, 6}, {&x, 2}, {&a, 6}}));
  add(run_step(*be2, {{&x, 6}}));
  add(run_step(*be2, {{&a, 0}, {&x, 1}}));  // an entry with nothing to run beside one decode
  add(run_step(*be2, {{&x, 0}}));
  ASSERT_EQ(x.done, 13);
  for (int32_t pos : {3, 5, 11, 12}) {
    EXPECT_LT(normalized_error(got.at({1, pos}), by_token.at(pos)), 1e-4) << "position " << pos;
  }
  // The others match their own dense forward passes.
  const auto want_a = reference_forward(m->weights, a.tokens);
  EXPECT_LT(normalized_error(got.at({2, 10}), row(want_a, 10, vocab)), 1e-4);
  const auto want_b = reference_forward(m->weights, b.tokens);
  EXPECT_LT(normalized_error(got.at({3, 6}), row(want_b, 6, vocab)), 1e-4);
}

TEST_P(CpuBackendModels, ablations_match_dense_reference_and_change_logits) {
  auto m = make_test_model(GetParam().spec);
  const int64_t vocab = m->weights.config.vocab_size;
  const Seq seq = target_sequence(vocab);
  const int32_t last = int32_t(seq.tokens.size()) - 1;
  auto full = make(m->weights, small_options());
  const auto none = run_chunked(*full, seq, 5).at(last);
  for (Ablation ab : {Ablation::kNoAttention, Ablation::kNoMlp}) {
    auto be = make(m->weights, small_options(ab));
    const auto got = run_chunked(*be, seq, 5).at(last);
    const auto want = reference_forward(m->weights, seq.tokens, ab);
    EXPECT_LT(normalized_error(got, row(want, last, vocab)), 1e-4) << ablation_name(ab);
    EXPECT_GT(normalized_error(got, none), 1e-2) << ablation_name(ab);
  }
}

INSTANTIATE_TEST_SUITE_P(Models, CpuBackendModels, ::testing::ValuesIn(cases()),
                         [](const auto& info) { return info.param.name; });

TEST(CpuBackend, without_attention_last_logits_ignore_earlier_tokens) {
  auto m = make_test_model(TestModelSpec{});
  auto be = make(m->weights, small_options(Ablation::kNoAttention));
  Seq a, b;
  a.id = 1;
  a.tokens = {1, 2, 3, 9};
  a.blocks = {0};
  b.id = 2;
  b.tokens = {50, 9};
  b.blocks = {1};
  const auto la = run_chunked(*be, a, 64).at(3);
  const auto lb = run_chunked(*be, b, 64).at(1);
  EXPECT_EQ(la, lb);
}

TEST(CpuBackend, samples_with_the_request_seed_and_generated_count) {
  auto m = make_test_model(TestModelSpec{});
  auto be = make(m->weights, small_options());
  const std::vector<int32_t> tokens = {4, 8, 15, 16, 23};
  const std::vector<int32_t> blocks = {5, 9};
  Batch batch;
  BatchEntry e;
  e.tokens = tokens;
  e.block_table = blocks;
  e.sample = true;
  e.sampling.temperature = 1.5f;
  e.sampling.seed = 77;
  e.num_generated = 3;
  batch.entries.push_back(e);
  StepOutput out;
  be->step(batch, true, &out);
  ASSERT_EQ(out.tokens.size(), 1u);
  EXPECT_EQ(out.tokens[0], sample_token(out.logits, e.sampling, 3));
  // Without want_logits the logits stay empty; the token is the same (same KV contents rewritten).
  StepOutput out2;
  be->step(batch, false, &out2);
  EXPECT_TRUE(out2.logits.empty());
  EXPECT_EQ(out2.tokens, out.tokens);
}

TEST(CpuBackend, entries_without_sample_return_no_token) {
  auto m = make_test_model(TestModelSpec{});
  auto be = make(m->weights, small_options());
  const std::vector<int32_t> tokens = {4, 8, 15};
  const std::vector<int32_t> blocks = {2};
  Batch batch;
  BatchEntry e;
  e.tokens = tokens;
  e.block_table = blocks;
  batch.entries.push_back(e);
  StepOutput out;
  be->step(batch, true, &out);
  EXPECT_TRUE(out.tokens.empty());
  EXPECT_TRUE(out.logits.empty());
}

TEST(CpuBackend, kv_cache_size_follows_options) {
  auto m = make_test_model(TestModelSpec{});
  const auto& c = m->weights.config;
  BackendOptions o = small_options();  // 8 sequences of 64 tokens, blocks of 4
  auto be = make(m->weights, o);
  EXPECT_EQ(be->block_size(), kBlockSize);
  EXPECT_EQ(be->num_kv_blocks(), 8 * 64 / kBlockSize);
  EXPECT_EQ(be->name(), "cpu");
  EXPECT_EQ(be->config().hidden_size, c.hidden_size);

  const int64_t per_block = 2 * c.num_layers * kBlockSize * c.kv_dim() * 4;
  o.cpu_kv_cache_bytes = per_block * 100 + 7;
  EXPECT_EQ(make(m->weights, o)->num_kv_blocks(), 100);

  o.cpu_kv_cache_bytes = per_block * 3;  // less than one 64-token sequence
  auto r = cpu::make_cpu_backend(m->weights, o);
  ASSERT_FALSE(r.is_ok());
  EXPECT_NE(r.error().find("max_model_len"), std::string::npos) << r.error();
}

TEST(CpuBackend, rejects_weights_whose_shapes_disagree_with_the_config) {
  auto m = make_test_model(TestModelSpec{});
  m->weights.layers[1].k_proj.shape = {7, 40};
  auto r = cpu::make_cpu_backend(m->weights, small_options());
  ASSERT_FALSE(r.is_ok());
  EXPECT_NE(r.error().find("k_proj"), std::string::npos) << r.error();
}

}  // namespace
}  // namespace mpserve::backend
