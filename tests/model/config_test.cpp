#include "model/config.h"

#include <cmath>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "model/model_test_util.h"
#include "model/model_writer.h"

namespace mpserve::model {
namespace {

using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::TempDir;
using testing::write_bytes;

void replace_once(std::string* text, const std::string& from, const std::string& to) {
  size_t at = text->find(from);
  ASSERT_NE(at, std::string::npos) << from;
  text->replace(at, from.size(), to);
}

// As published for Qwen/Qwen2.5-0.5B-Instruct (fields mpserve does not use left in on purpose).
constexpr const char* kQwen25Config = R"({
  "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
  "eos_token_id": 151645, "hidden_act": "silu", "hidden_size": 896, "initializer_range": 0.02,
  "intermediate_size": 4864, "max_position_embeddings": 32768, "max_window_layers": 21,
  "model_type": "qwen2", "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2,
  "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": true,
  "torch_dtype": "bfloat16", "transformers_version": "4.43.1", "use_cache": true,
  "use_sliding_window": false, "vocab_size": 151936})";

// As published for meta-llama/Llama-3.2-1B-Instruct.
constexpr const char* kLlama32Config = R"({
  "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "head_dim": 64,
  "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 8192,
  "max_position_embeddings": 131072, "mlp_bias": false, "model_type": "llama",
  "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8, "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                   "original_max_position_embeddings": 8192, "rope_type": "llama3"},
  "rope_theta": 500000.0, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
  "transformers_version": "4.45.0.dev0", "use_cache": true, "vocab_size": 128256})";

// As published for Qwen/Qwen3-0.6B: head_dim (128) is not hidden_size / heads (64).
constexpr const char* kQwen3Config = R"({
  "architectures": ["Qwen3ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu",
  "hidden_size": 1024, "initializer_range": 0.02, "intermediate_size": 3072,
  "max_position_embeddings": 40960, "max_window_layers": 28, "model_type": "qwen3",
  "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 8, "rms_norm_eps": 1e-06,
  "rope_scaling": null, "rope_theta": 1000000, "sliding_window": null, "tie_word_embeddings": true,
  "torch_dtype": "bfloat16", "use_cache": true, "use_sliding_window": false, "vocab_size": 151936})";

TEST(ModelConfig, parses_qwen2_5_config) {
  auto c = parse_model_config(kQwen25Config, "config.json");
  ASSERT_TRUE(c.is_ok()) << c.error();
  EXPECT_EQ(c->arch, Arch::kQwen2);
  EXPECT_EQ(c->hidden_size, 896);
  EXPECT_EQ(c->num_layers, 24);
  EXPECT_EQ(c->num_heads, 14);
  EXPECT_EQ(c->num_kv_heads, 2);
  EXPECT_EQ(c->head_dim, 64);
  EXPECT_EQ(c->q_dim(), 896);
  EXPECT_EQ(c->kv_dim(), 128);
  EXPECT_EQ(c->intermediate_size, 4864);
  EXPECT_EQ(c->vocab_size, 151936);
  EXPECT_EQ(c->max_position_embeddings, 32768);
  EXPECT_DOUBLE_EQ(c->rms_norm_eps, 1e-6);
  EXPECT_DOUBLE_EQ(c->rope_theta, 1e6);
  EXPECT_FALSE(c->rope_scaling.enabled);
  EXPECT_TRUE(c->tie_word_embeddings);
  EXPECT_TRUE(c->attention_bias) << "Qwen2 always has q/k/v bias";
  EXPECT_FALSE(c->qk_norm);
  EXPECT_EQ(c->torch_dtype, DType::kBF16);
  EXPECT_THAT(c->eos_token_ids, ElementsAre(151645));
  EXPECT_EQ(c->bos_token_id, 151643);
  EXPECT_EQ(c->num_parameters(), 494032768);  // the published Qwen2.5-0.5B parameter count
}

TEST(ModelConfig, parses_llama3_2_config_with_rope_scaling) {
  auto c = parse_model_config(kLlama32Config, "config.json");
  ASSERT_TRUE(c.is_ok()) << c.error();
  EXPECT_EQ(c->arch, Arch::kLlama);
  EXPECT_EQ(c->head_dim, 64);
  EXPECT_EQ(c->num_kv_heads, 8);
  EXPECT_FALSE(c->attention_bias);
  EXPECT_TRUE(c->rope_scaling.enabled);
  EXPECT_DOUBLE_EQ(c->rope_scaling.factor, 32.0);
  EXPECT_DOUBLE_EQ(c->rope_scaling.low_freq_factor, 1.0);
  EXPECT_DOUBLE_EQ(c->rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(c->rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_DOUBLE_EQ(c->rms_norm_eps, 1e-5);
  EXPECT_THAT(c->eos_token_ids, ElementsAre(128001, 128008, 128009));
  EXPECT_EQ(c->bos_token_id, 128000);
  EXPECT_EQ(c->num_parameters(), 1235814400);  // the published Llama-3.2-1B parameter count
}

TEST(ModelConfig, llama_attention_bias_field_is_honoured) {
  std::string text = kLlama32Config;
  replace_once(&text, "\"attention_bias\": false", "\"attention_bias\": true");
  auto c = parse_model_config(text, "config.json");
  ASSERT_TRUE(c.is_ok()) << c.error();
  EXPECT_TRUE(c->attention_bias);
}

TEST(ModelConfig, parses_qwen3_config_with_explicit_head_dim_and_qk_norm) {
  auto c = parse_model_config(kQwen3Config, "config.json");
  ASSERT_TRUE(c.is_ok()) << c.error();
  EXPECT_EQ(c->arch, Arch::kQwen3);
  EXPECT_EQ(c->head_dim, 128);
  EXPECT_EQ(c->q_dim(), 2048);
  EXPECT_EQ(c->kv_dim(), 1024);
  EXPECT_TRUE(c->qk_norm);
  EXPECT_FALSE(c->attention_bias);
  EXPECT_DOUBLE_EQ(c->rope_theta, 1e6);
  EXPECT_EQ(c->max_position_embeddings, 40960);
}

TEST(ModelConfig, unknown_architecture_names_file_and_architecture) {
  std::string text = kQwen25Config;
  replace_once(&text, "Qwen2ForCausalLM", "MistralForCausalLM");
  auto c = parse_model_config(text, "/models/x/config.json");
  ASSERT_FALSE(c.is_ok());
  EXPECT_THAT(c.error(), AllOf(HasSubstr("/models/x/config.json"), HasSubstr("MistralForCausalLM")));
}

TEST(ModelConfig, missing_or_invalid_field_names_file_and_field) {
  std::string text = kQwen25Config;
  replace_once(&text, "\"hidden_size\": 896,", "");
  auto c = parse_model_config(text, "/m/config.json");
  ASSERT_FALSE(c.is_ok());
  EXPECT_THAT(c.error(), AllOf(HasSubstr("/m/config.json"), HasSubstr("hidden_size")));

  text = kQwen25Config;
  replace_once(&text, "\"num_hidden_layers\": 24", "\"num_hidden_layers\": \"24\"");
  c = parse_model_config(text, "/m/config.json");
  ASSERT_FALSE(c.is_ok());
  EXPECT_THAT(c.error(), AllOf(HasSubstr("/m/config.json"), HasSubstr("num_hidden_layers")));

  text = kQwen25Config;
  replace_once(&text, "\"vocab_size\": 151936", "\"vocab_size\": -5");
  c = parse_model_config(text, "/m/config.json");
  ASSERT_FALSE(c.is_ok());
  EXPECT_THAT(c.error(), HasSubstr("vocab_size"));

  c = parse_model_config("{\"architectures\": ", "/m/config.json");
  ASSERT_FALSE(c.is_ok());
  EXPECT_THAT(c.error(), AllOf(HasSubstr("/m/config.json"), HasSubstr("JSON")));

  c = parse_model_config("{}", "/m/config.json");
  ASSERT_FALSE(c.is_ok());
  EXPECT_THAT(c.error(), HasSubstr("architectures"));
}

TEST(ModelConfig, non_divisible_heads_are_rejected) {
  std::string text = kQwen25Config;
  replace_once(&text, "\"num_key_value_heads\": 2", "\"num_key_value_heads\": 3");
  auto c = parse_model_config(text, "/m/config.json");
  ASSERT_FALSE(c.is_ok());
  EXPECT_THAT(c.error(), AllOf(HasSubstr("/m/config.json"), HasSubstr("num_key_value_heads")));

  text = kQwen25Config;
  replace_once(&text, "\"num_attention_heads\": 14", "\"num_attention_heads\": 15");
  replace_once(&text, "\"num_key_value_heads\": 2", "\"num_key_value_heads\": 3");
  c = parse_model_config(text, "/m/config.json");
  ASSERT_FALSE(c.is_ok());
  EXPECT_THAT(c.error(), AllOf(HasSubstr("hidden_size"), HasSubstr("num_attention_heads")));
}

TEST(ModelConfig, unsupported_rope_scaling_and_activation_are_rejected) {
  std::string text = kLlama32Config;
  replace_once(&text, "\"rope_type\": \"llama3\"", "\"rope_type\": \"yarn\"");
  auto c = parse_model_config(text, "/m/config.json");
  ASSERT_FALSE(c.is_ok());
  EXPECT_THAT(c.error(), AllOf(HasSubstr("/m/config.json"), HasSubstr("yarn")));

  text = kQwen25Config;
  replace_once(&text, "\"hidden_act\": \"silu\"", "\"hidden_act\": \"gelu\"");
  c = parse_model_config(text, "/m/config.json");
  ASSERT_FALSE(c.is_ok());
  EXPECT_THAT(c.error(), HasSubstr("gelu"));
}

TEST(ModelConfig, load_merges_generation_config_eos_ids) {
  TempDir dir;
  write_bytes(dir / "config.json", kQwen25Config);
  write_bytes(dir / "generation_config.json", R"({"bos_token_id": 151643, "eos_token_id": [151645, 151643]})");
  auto c = load_model_config(dir.path());
  ASSERT_TRUE(c.is_ok()) << c.error();
  EXPECT_THAT(c->eos_token_ids, ElementsAre(151645, 151643));

  write_bytes(dir / "generation_config.json", "{not json");
  c = load_model_config(dir.path());
  ASSERT_FALSE(c.is_ok());
  EXPECT_THAT(c.error(), HasSubstr("generation_config.json"));

  std::filesystem::remove(dir / "generation_config.json");
  c = load_model_config(dir.path());
  ASSERT_TRUE(c.is_ok());
  EXPECT_THAT(c->eos_token_ids, ElementsAre(151645));
}

TEST(ModelConfig, load_without_config_names_the_path) {
  TempDir dir;
  auto c = load_model_config(dir.path());
  ASSERT_FALSE(c.is_ok());
  EXPECT_THAT(c.error(), HasSubstr((dir / "config.json").string()));
}

TEST(ModelConfig, to_json_round_trips_every_known_shape_and_qwen3) {
  std::vector<ModelConfig> configs;
  for (const std::string& shape : known_shapes()) configs.push_back(*shape_config(shape));
  configs.push_back(*parse_model_config(kQwen3Config, "qwen3"));
  configs.push_back(*parse_model_config(kLlama32Config, "llama"));
  for (const ModelConfig& c : configs) {
    std::string text = model_config_to_json(c);
    auto back = parse_model_config(text, "round-trip");
    ASSERT_TRUE(back.is_ok()) << back.error() << "\n" << text;
    EXPECT_EQ(back->arch, c.arch);
    EXPECT_EQ(back->vocab_size, c.vocab_size);
    EXPECT_EQ(back->hidden_size, c.hidden_size);
    EXPECT_EQ(back->intermediate_size, c.intermediate_size);
    EXPECT_EQ(back->num_layers, c.num_layers);
    EXPECT_EQ(back->num_heads, c.num_heads);
    EXPECT_EQ(back->num_kv_heads, c.num_kv_heads);
    EXPECT_EQ(back->head_dim, c.head_dim);
    EXPECT_EQ(back->max_position_embeddings, c.max_position_embeddings);
    EXPECT_EQ(back->rms_norm_eps, c.rms_norm_eps);
    EXPECT_EQ(back->rope_theta, c.rope_theta);
    EXPECT_EQ(back->rope_scaling.enabled, c.rope_scaling.enabled);
    EXPECT_EQ(back->rope_scaling.factor, c.rope_scaling.factor);
    EXPECT_EQ(back->rope_scaling.low_freq_factor, c.rope_scaling.low_freq_factor);
    EXPECT_EQ(back->rope_scaling.high_freq_factor, c.rope_scaling.high_freq_factor);
    EXPECT_EQ(back->rope_scaling.original_max_position_embeddings, c.rope_scaling.original_max_position_embeddings);
    EXPECT_EQ(back->tie_word_embeddings, c.tie_word_embeddings);
    EXPECT_EQ(back->attention_bias, c.attention_bias);
    EXPECT_EQ(back->qk_norm, c.qk_norm);
    EXPECT_EQ(back->torch_dtype, c.torch_dtype);
    EXPECT_EQ(back->eos_token_ids, c.eos_token_ids);
    EXPECT_EQ(back->bos_token_id, c.bos_token_id);
  }
}

TEST(RopeInvFreq, default_frequencies_are_theta_to_the_minus_2i_over_d) {
  ModelConfig c = *parse_model_config(kQwen25Config, "q");
  std::vector<float> f = rope_inv_freq(c);
  ASSERT_EQ(f.size(), 32u);
  EXPECT_FLOAT_EQ(f[0], 1.0f);
  EXPECT_FLOAT_EQ(f[1], static_cast<float>(std::pow(1e6, -2.0 / 64)));
  EXPECT_FLOAT_EQ(f[16], 1e-3f);  // 1e6^(-1/2)
  EXPECT_FLOAT_EQ(f[31], static_cast<float>(std::pow(1e6, -62.0 / 64)));
}

TEST(RopeInvFreq, llama3_scaling_matches_hf_formula) {
  // Expected values computed by hand from transformers' _compute_llama3_parameters for theta
  // 500000, head_dim 64, factor 32, low 1, high 4, original 8192: high-frequency band
  // (wavelength < 2048) unchanged, low band (> 8192) divided by 32, and the three entries
  // between (i = 15, 16, 17) interpolated with smooth = (8192 / wavelength - 1) / 3.
  ModelConfig c = *parse_model_config(kLlama32Config, "l");
  std::vector<float> f = rope_inv_freq(c);
  ASSERT_EQ(f.size(), 32u);
  EXPECT_FLOAT_EQ(f[0], 1.0f);
  EXPECT_FLOAT_EQ(f[1], 0.6636012376960885f);
  EXPECT_FLOAT_EQ(f[10], 0.016560440080994446f);
  EXPECT_FLOAT_EQ(f[14], 0.0032114459947525913f);     // wavelength 1956: kept
  EXPECT_FLOAT_EQ(f[15], 0.001290547928209264f);      // wavelength 2948: smoothed
  EXPECT_FLOAT_EQ(f[16], 0.00042955679655936815f);    // wavelength 4443: smoothed
  EXPECT_FLOAT_EQ(f[17], 9.70828780262767e-05f);      // wavelength 6695: smoothed
  EXPECT_FLOAT_EQ(f[18], 1.9461638184831125e-05f);    // wavelength 10089: divided by 32
  EXPECT_FLOAT_EQ(f[31], 9.418306725434909e-08f);

  c.rope_scaling.enabled = false;
  EXPECT_FLOAT_EQ(rope_inv_freq(c)[18], 0.000622772421914596f);
}

}  // namespace
}  // namespace mpserve::model
