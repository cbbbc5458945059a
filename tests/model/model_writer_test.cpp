#include "model/model_writer.h"

#include <array>
#include <cmath>
#include <cstdlib>
#include <map>
#include <set>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "common/env.h"
#include "common/half.h"
#include "model/llama3_tokenizer.h"
#include "model/model_test_util.h"
#include "model/weights.h"

namespace mpserve::model {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::read_bytes;
using testing::TempDir;

std::filesystem::path tokenizer_dir() {
  auto d = find_tokenizer_source_dir();
  EXPECT_TRUE(d.is_ok()) << d.error();
  return d.is_ok() ? *d : std::filesystem::path();
}

Status make(const std::filesystem::path& out, uint64_t seed, const std::string& shape = "tiny") {
  MakeModelOptions o;
  o.shape = shape;
  o.out_dir = out;
  o.seed = seed;
  o.tokenizer_source_dir = tokenizer_dir();
  return make_model(o);
}

struct Stats {
  double mean = 0, rms = 0, max_abs = 0;
  bool finite = true;
};
Stats stats(const TensorView& t) {
  Stats s;
  const auto* p = static_cast<const uint16_t*>(t.data);
  for (int64_t i = 0; i < t.numel(); ++i) {
    double x = bf16_to_f32(p[i]);
    s.finite = s.finite && std::isfinite(x);
    s.mean += x;
    s.rms += x * x;
    s.max_abs = std::max(s.max_abs, std::abs(x));
  }
  s.mean /= static_cast<double>(t.numel());
  s.rms = std::sqrt(s.rms / static_cast<double>(t.numel()));
  return s;
}

TEST(ShapeConfig, known_shapes_have_the_public_dimensions) {
  struct Want {
    std::string shape;
    int64_t hidden, layers, heads, kv_heads, head_dim, intermediate, vocab;
    bool tied;
    int64_t params;  // as published on the Hugging Face model cards
  };
  const std::vector<Want> want = {
      {"tiny", 256, 4, 4, 2, 64, 768, 151936, false, 80941312},  // untied: plan_tensors' note
      {"tiny-plain", 256, 4, 4, 2, 64, 768, 151936, true, 42045696},  // tiny as it was in weights v2
      {"qwen2.5-0.5b", 896, 24, 14, 2, 64, 4864, 151936, true, 494032768},
      {"qwen2.5-1.5b", 1536, 28, 12, 2, 128, 8960, 151936, true, 1543714304},
      {"qwen2.5-3b", 2048, 36, 16, 2, 128, 11008, 151936, true, 3085938688},
      {"qwen2.5-7b", 3584, 28, 28, 4, 128, 18944, 152064, false, 7615616512},
      {"llama3.2-1b", 2048, 16, 32, 8, 64, 8192, 128256, true, 1235814400},
  };
  ASSERT_EQ(known_shapes().size(), want.size());
  for (const Want& w : want) {
    auto c = shape_config(w.shape);
    ASSERT_TRUE(c.is_ok()) << c.error();
    EXPECT_EQ(c->hidden_size, w.hidden) << w.shape;
    EXPECT_EQ(c->num_layers, w.layers) << w.shape;
    EXPECT_EQ(c->num_heads, w.heads) << w.shape;
    EXPECT_EQ(c->num_kv_heads, w.kv_heads) << w.shape;
    EXPECT_EQ(c->head_dim, w.head_dim) << w.shape;
    EXPECT_EQ(c->intermediate_size, w.intermediate) << w.shape;
    EXPECT_EQ(c->vocab_size, w.vocab) << w.shape;
    EXPECT_EQ(c->tie_word_embeddings, w.tied) << w.shape;
    EXPECT_EQ(c->num_parameters(), w.params) << w.shape;
  }
  auto llama = *shape_config("llama3.2-1b");
  EXPECT_EQ(llama.arch, Arch::kLlama);
  EXPECT_TRUE(llama.rope_scaling.enabled);
  EXPECT_EQ(llama.rope_scaling.factor, 32.0);
  EXPECT_EQ(llama.rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_EQ(llama.rope_theta, 500000.0);
  EXPECT_EQ(llama.rms_norm_eps, 1e-5);
  EXPECT_EQ(llama.max_position_embeddings, 131072);
  EXPECT_FALSE(llama.attention_bias);
  auto qwen = *shape_config("qwen2.5-0.5b");
  EXPECT_EQ(qwen.rope_theta, 1e6);
  EXPECT_EQ(qwen.rms_norm_eps, 1e-6);
  EXPECT_EQ(qwen.max_position_embeddings, 32768);
  EXPECT_TRUE(qwen.attention_bias);
}

TEST(ShapeConfig, unknown_shape_lists_known_ones) {
  auto c = shape_config("gpt-5");
  ASSERT_FALSE(c.is_ok());
  EXPECT_THAT(c.error(), HasSubstr("qwen2.5-0.5b"));
  MakeModelOptions o;
  o.shape = "gpt-5";
  EXPECT_FALSE(make_model(o).is_ok());
}

TEST(MakeModel, tiny_loads_back_with_tokenizer_and_eos_ids) {
  TempDir dir;
  ASSERT_TRUE(make(dir.path(), 0).is_ok());
  auto w = load_model(dir.path());
  ASSERT_TRUE(w.is_ok()) << w.error();
  const ModelConfig& c = (*w)->config;
  EXPECT_EQ(c.arch, Arch::kQwen2);
  EXPECT_EQ(c.hidden_size, 256);
  EXPECT_EQ(c.vocab_size, 151936);
  EXPECT_THAT(c.eos_token_ids, ElementsAre(151645, 151643));  // config.json, then generation_config.json
  EXPECT_EQ((*w)->embed_tokens.dtype, DType::kBF16);
  EXPECT_NE((*w)->lm_head.data, (*w)->embed_tokens.data);
  EXPECT_EQ(read_bytes(dir / "tokenizer.json"), read_bytes(tokenizer_dir() / "tokenizer.json"));
  EXPECT_EQ(read_bytes(dir / "tokenizer_config.json"), read_bytes(tokenizer_dir() / "tokenizer_config.json"));
  EXPECT_FALSE(std::filesystem::exists(dir / "model.safetensors.partial"));
}

TEST(MakeModel, same_seed_gives_same_bytes_and_another_seed_differs) {
  TempDir a, b, c;
  ASSERT_TRUE(make(a.path(), 7).is_ok());
  ASSERT_TRUE(make(b.path(), 7).is_ok());
  ASSERT_TRUE(make(c.path(), 8).is_ok());
  const std::string wa = read_bytes(a / "model.safetensors");
  EXPECT_TRUE(wa == read_bytes(b / "model.safetensors"));
  EXPECT_FALSE(wa == read_bytes(c / "model.safetensors"));
  EXPECT_EQ(read_bytes(a / "config.json"), read_bytes(c / "config.json"));
}

TEST(MakeModel, initialisation_scales_follow_the_note) {
  TempDir dir;
  ASSERT_TRUE(make(dir.path(), 3).is_ok());
  auto w = load_model(dir.path());
  ASSERT_TRUE(w.is_ok()) << w.error();
  const double H = 256, I = 768, L = 4;
  Stats embed = stats((*w)->embed_tokens);
  EXPECT_TRUE(embed.finite);
  EXPECT_NEAR(embed.rms, 1.4, 0.01);  // tiny's kPeakedEmbedStd
  EXPECT_NEAR(embed.mean, 0.0, 0.001);
  Stats head = stats((*w)->lm_head);
  EXPECT_TRUE(head.finite);
  EXPECT_NEAR(head.rms, 2.0 / std::sqrt(H), 0.01);
  const LayerWeights& l = (*w)->layers[2];
  EXPECT_NEAR(stats(l.q_proj).rms, 1.0 / std::sqrt(H), 0.005);
  EXPECT_NEAR(stats(l.o_proj).rms, 2.5 / std::sqrt(L) / std::sqrt(H), 0.01);
  EXPECT_NEAR(stats(l.down_proj).rms, 4.0 / std::sqrt(L) / std::sqrt(I), 0.01);
  Stats norm = stats(l.input_norm);
  EXPECT_NEAR(norm.mean, 1.0, 0.02);
  EXPECT_LE(norm.max_abs, 1.06);
  EXPECT_LE(stats(l.k_bias).max_abs, 0.101);
  // Different tensors get different streams, not the same numbers rescaled.
  const auto* k = static_cast<const uint16_t*>(l.k_proj.data);
  const auto* v = static_cast<const uint16_t*>(l.v_proj.data);
  EXPECT_NE(std::vector<uint16_t>(k, k + 64), std::vector<uint16_t>(v, v + 64));
}

// tiny's planted next-token map (plan_tensors' note): lm_head row v is embedding row pred(v)
// rescaled, and following pred through the ordinary ids is one cycle over all 151643 of them; the
// special and padding rows (151643 up) are no embedding row. Rows are matched by their sign pattern.
TEST(MakeModel, tiny_lm_head_rows_are_embedding_rows_in_one_cycle) {
  TempDir dir;
  ASSERT_TRUE(make(dir.path(), 0).is_ok());
  auto w = load_model(dir.path());
  ASSERT_TRUE(w.is_ok()) << w.error();
  const int64_t V = 151936, H = 256, kOrdinary = 151643;
  const auto* embed = static_cast<const uint16_t*>((*w)->embed_tokens.data);
  const auto* head = static_cast<const uint16_t*>((*w)->lm_head.data);
  auto signs = [H](const uint16_t* row) {
    std::array<uint64_t, 4> s{};
    for (int64_t j = 0; j < H; ++j) s[size_t(j / 64)] |= uint64_t(row[j] >> 15) << (j % 64);
    return s;
  };
  std::map<std::array<uint64_t, 4>, int64_t> by_signs;
  for (int64_t v = 0; v < V; ++v) by_signs.emplace(signs(embed + v * H), v);
  std::vector<int64_t> pred(size_t(V), -1);
  for (int64_t v = 0; v < V; ++v) {
    auto it = by_signs.find(signs(head + v * H));
    if (it != by_signs.end()) pred[size_t(v)] = it->second;
  }
  for (int64_t v = kOrdinary; v < V; ++v) EXPECT_EQ(pred[size_t(v)], -1) << "special/padding row " << v;
  // One cycle: from id 0, pred returns to 0 after exactly kOrdinary steps.
  int64_t v = 0, steps = 0;
  do {
    ASSERT_GE(pred[size_t(v)], 0) << "ordinary lm_head row " << v << " is no embedding row";
    ASSERT_LT(pred[size_t(v)], kOrdinary);
    v = pred[size_t(v)];
    ++steps;
  } while (v != 0 && steps <= kOrdinary);
  EXPECT_EQ(steps, kOrdinary);
  // The row is the embedding row rescaled from std 1.4 to 2/sqrt(H) (up to bf16 rounding).
  const double ratio = (2.0 / 16.0) / 1.4;
  for (int64_t j = 0; j < H; ++j) {
    const double e = bf16_to_f32(embed[pred[7] * H + j]), h = bf16_to_f32(head[7 * H + j]);
    EXPECT_NEAR(h, e * ratio, 0.01 * std::fabs(e * ratio) + 1e-6) << j;
  }
}

// The bytes of tiny, seed 0 (the embedded default model) are pinned. When this fails because
// make-model's initialisation changed on purpose: bump kWeightsVersion (model_writer.h) so the
// cached default model is rebuilt, re-record tests/data/golden_tiny.json (docs/results/
// golden_logits.md), and pin the new value.
std::string weights_fnv1a(const std::filesystem::path& dir) {
  const std::string bytes = read_bytes(dir / "model.safetensors");
  uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a 64
  for (unsigned char ch : bytes) h = (h ^ ch) * 0x100000001b3ull;
  return fmt::format("{:016x}", h);
}

TEST(MakeModel, tiny_seed0_bytes_are_pinned) {
  TempDir dir;
  ASSERT_TRUE(make(dir.path(), 0).is_ok());
  EXPECT_EQ(weights_fnv1a(dir.path()), "de25d4fd74f4f2ce")
      << "tiny seed 0 weights changed (weights version " << kWeightsVersion << ")";
}

// tiny-plain, seed 0 is byte for byte the tiny of weights v2 (tied, no planted map), whose greedy
// tokens depend on the whole context; the attention / KV-cache path tests rely on that.
TEST(MakeModel, tiny_plain_seed0_bytes_are_tiny_of_weights_v2) {
  TempDir dir;
  ASSERT_TRUE(make(dir.path(), 0, "tiny-plain").is_ok());
  EXPECT_EQ(weights_fnv1a(dir.path()), "c48ee2da6de50d14")
      << "tiny-plain seed 0 weights changed (weights version " << kWeightsVersion << ")";
  auto w = load_model(dir.path());
  ASSERT_TRUE(w.is_ok()) << w.error();
  EXPECT_EQ((*w)->lm_head.data, (*w)->embed_tokens.data);
}

TEST(Llama3Tokenizer, derived_from_qwen_vocabulary_with_llama3_specials) {
  auto src = read_bytes(tokenizer_dir() / "tokenizer.json");
  auto derived = derive_llama3_tokenizer_json(src, "qwen tokenizer.json");
  ASSERT_TRUE(derived.is_ok()) << derived.error();
  auto j = nlohmann::json::parse(*derived);
  const auto& vocab = j["model"]["vocab"];
  EXPECT_EQ(vocab.size(), 128000u);
  std::set<std::string> tokens;
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    ASSERT_LT(it.value().get<int64_t>(), 128000);
    tokens.insert(it.key());
  }
  size_t merges = 0;
  for (const auto& m : j["model"]["merges"]) {
    ASSERT_EQ(m.size(), 2u);
    std::string a = m[0], b = m[1];
    ASSERT_TRUE(tokens.count(a) && tokens.count(b) && tokens.count(a + b)) << a << " " << b;
    ++merges;
  }
  EXPECT_GT(merges, 100000u);
  const auto& added = j["added_tokens"];
  ASSERT_EQ(added.size(), 256u);
  EXPECT_EQ(added[0]["id"], 128000);
  EXPECT_EQ(added[0]["content"], "<|begin_of_text|>");
  EXPECT_EQ(added[1]["content"], "<|end_of_text|>");
  EXPECT_EQ(added[2]["content"], "<|reserved_special_token_0|>");
  EXPECT_EQ(added[6]["content"], "<|start_header_id|>");
  EXPECT_EQ(added[7]["content"], "<|end_header_id|>");
  EXPECT_EQ(added[9]["content"], "<|eot_id|>");
  EXPECT_EQ(added[255]["id"], 128255);
  EXPECT_EQ(added[255]["content"], "<|reserved_special_token_247|>");
  const std::string regex = j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"];
  EXPECT_THAT(regex, HasSubstr("\\p{N}{1,3}"));
  EXPECT_EQ(j["post_processor"]["processors"][1]["special_tokens"]["<|begin_of_text|>"]["ids"][0], 128000);

  auto config = nlohmann::json::parse(llama3_tokenizer_config_json());
  EXPECT_EQ(config["eos_token"], "<|eot_id|>");
  EXPECT_EQ(config["bos_token"], "<|begin_of_text|>");
  EXPECT_THAT(config["chat_template"].get<std::string>(), HasSubstr("<|start_header_id|>"));
  EXPECT_EQ(config["added_tokens_decoder"]["128009"]["content"], "<|eot_id|>");
}

// Sets an environment variable for one test and restores it after.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const std::string& value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    ::setenv(name, value.c_str(), 1);
  }
  ~ScopedEnv() {
    if (old_) {
      ::setenv(name_, old_->c_str(), 1);
    } else {
      ::unsetenv(name_);
    }
  }

 private:
  const char* name_;
  std::optional<std::string> old_;
};

TEST(DefaultModel, concurrent_first_use_builds_once_and_all_callers_agree) {
  TempDir cache;
  ScopedEnv env_cache(env::kCacheDir, cache.path().string());
  ScopedEnv env_tok(env::kTokenizerDir, tokenizer_dir().string());
  constexpr int kCallers = 4;
  std::vector<Result<std::filesystem::path>> results(kCallers, Status::error("not run"));
  std::vector<std::thread> threads;
  for (int i = 0; i < kCallers; ++i) threads.emplace_back([&results, i] { results[i] = ensure_default_model(); });
  for (std::thread& t : threads) t.join();
  for (const auto& r : results) {
    ASSERT_TRUE(r.is_ok()) << r.error();
    EXPECT_EQ(*r, *results[0]);
  }
  EXPECT_TRUE(load_model(*results[0]).is_ok());
  // No temporary directories are left behind.
  for (const auto& entry : std::filesystem::directory_iterator(results[0]->parent_path())) {
    EXPECT_EQ(entry.path(), *results[0]);
  }
  // Later calls reuse it.
  auto again = ensure_default_model();
  ASSERT_TRUE(again.is_ok());
  EXPECT_EQ(*again, *results[0]);
}

TEST(DefaultModel, cached_models_are_named_by_shape_seed_and_weights_version) {
  TempDir cache;
  ScopedEnv env_cache(env::kCacheDir, cache.path().string());
  ScopedEnv env_tok(env::kTokenizerDir, tokenizer_dir().string());
  auto d = ensure_cached_model("tiny-plain", 3);
  ASSERT_TRUE(d.is_ok()) << d.error();
  EXPECT_EQ(*d, cache.path() / "models" / fmt::format("tiny-plain-seed3-{}", kWeightsVersion));
  EXPECT_TRUE(load_model(*d).is_ok());
  auto bad = ensure_cached_model("gpt-5", 0);
  ASSERT_FALSE(bad.is_ok());
  EXPECT_THAT(bad.error(), HasSubstr("gpt-5"));
}

TEST(DefaultModel, tokenizer_dir_env_pointing_nowhere_is_an_error) {
  TempDir empty;
  ScopedEnv env_tok(env::kTokenizerDir, empty.path().string());
  auto d = find_tokenizer_source_dir();
  ASSERT_FALSE(d.is_ok());
  EXPECT_THAT(d.error(), HasSubstr(empty.path().string()));
}

}  // namespace
}  // namespace mpserve::model
