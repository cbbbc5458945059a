#include "model/weights.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "model/model_test_util.h"

namespace mpserve::model {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using testing::TempDir;
using testing::write_bytes;

// A very small model of any architecture, written tensor by tensor (all f32 unless overridden).
class SmallModel {
 public:
  explicit SmallModel(Arch arch, bool tied = true) {
    c_.arch = arch;
    c_.vocab_size = 64;
    c_.hidden_size = 16;
    c_.intermediate_size = 24;
    c_.num_layers = 2;
    c_.num_heads = 4;
    c_.num_kv_heads = 2;
    c_.head_dim = arch == Arch::kQwen3 ? 8 : 4;  // Qwen3 head_dim need not be hidden / heads
    c_.max_position_embeddings = 128;
    c_.tie_word_embeddings = tied;
    c_.attention_bias = arch == Arch::kQwen2;
    c_.qk_norm = arch == Arch::kQwen3;
    c_.eos_token_ids = {1};
    const int64_t H = c_.hidden_size, Q = c_.q_dim(), K = c_.kv_dim(), I = c_.intermediate_size, V = c_.vocab_size;
    add("model.embed_tokens.weight", {V, H});
    add("model.norm.weight", {H});
    if (!tied) add("lm_head.weight", {V, H});
    for (int i = 0; i < 2; ++i) {
      std::string p = "model.layers." + std::to_string(i) + ".";
      add(p + "input_layernorm.weight", {H});
      add(p + "self_attn.q_proj.weight", {Q, H});
      add(p + "self_attn.k_proj.weight", {K, H});
      add(p + "self_attn.v_proj.weight", {K, H});
      if (c_.attention_bias) {
        add(p + "self_attn.q_proj.bias", {Q});
        add(p + "self_attn.k_proj.bias", {K});
        add(p + "self_attn.v_proj.bias", {K});
      }
      if (c_.qk_norm) {
        add(p + "self_attn.q_norm.weight", {c_.head_dim});
        add(p + "self_attn.k_norm.weight", {c_.head_dim});
      }
      add(p + "self_attn.o_proj.weight", {H, Q});
      add(p + "post_attention_layernorm.weight", {H});
      add(p + "mlp.gate_proj.weight", {I, H});
      add(p + "mlp.up_proj.weight", {I, H});
      add(p + "mlp.down_proj.weight", {H, I});
    }
  }

  void set_shape(const std::string& name, std::vector<int64_t> shape) { find(name).shape = std::move(shape); }
  void set_dtype(const std::string& name, DType dtype) { find(name).dtype = dtype; }
  void remove(const std::string& name) {
    std::erase_if(tensors_, [&](const Spec& s) { return s.name == name; });
  }

  void write(const std::filesystem::path& dir) {
    write_bytes(dir / "config.json", model_config_to_json(c_));
    std::vector<std::string> storage;
    storage.reserve(tensors_.size());
    std::vector<TensorToWrite> out;
    for (const Spec& s : tensors_) {
      int64_t n = 1;
      for (int64_t d : s.shape) n *= d;
      storage.emplace_back(static_cast<size_t>(n) * dtype_size(s.dtype), '\0');
      out.push_back({s.name, s.dtype, s.shape, storage.back()});
    }
    ASSERT_TRUE(write_safetensors(dir / "model.safetensors", out).is_ok());
  }

  const ModelConfig& config() const { return c_; }

 private:
  struct Spec {
    std::string name;
    std::vector<int64_t> shape;
    DType dtype = DType::kF32;
  };
  void add(std::string name, std::vector<int64_t> shape) { tensors_.push_back({std::move(name), std::move(shape)}); }
  Spec& find(const std::string& name) {
    for (Spec& s : tensors_) {
      if (s.name == name) return s;
    }
    ADD_FAILURE() << "no tensor " << name;
    return tensors_.front();
  }

  ModelConfig c_;
  std::vector<Spec> tensors_;
};

TEST(LoadModel, binds_every_qwen2_tensor_and_ties_lm_head) {
  TempDir dir;
  SmallModel m(Arch::kQwen2);
  m.write(dir.path());
  auto w = load_model(dir.path());
  ASSERT_TRUE(w.is_ok()) << w.error();
  EXPECT_EQ((*w)->dir, dir.path());
  EXPECT_EQ((*w)->config.hidden_size, 16);
  ASSERT_EQ((*w)->layers.size(), 2u);
  const LayerWeights& l = (*w)->layers[1];
  EXPECT_EQ(l.q_proj.shape, (std::vector<int64_t>{16, 16}));
  EXPECT_EQ(l.k_proj.shape, (std::vector<int64_t>{8, 16}));
  EXPECT_EQ(l.k_bias.shape, (std::vector<int64_t>{8}));
  EXPECT_EQ(l.down_proj.shape, (std::vector<int64_t>{16, 24}));
  EXPECT_TRUE(l.q_norm.empty());
  EXPECT_FALSE(l.q_bias.empty());
  EXPECT_EQ((*w)->lm_head.data, (*w)->embed_tokens.data);
  EXPECT_EQ((*w)->lm_head.shape, (std::vector<int64_t>{64, 16}));
}

TEST(LoadModel, llama_has_no_bias_and_untied_lm_head_is_its_own_tensor) {
  TempDir dir;
  SmallModel m(Arch::kLlama, /*tied=*/false);
  m.write(dir.path());
  auto w = load_model(dir.path());
  ASSERT_TRUE(w.is_ok()) << w.error();
  EXPECT_TRUE((*w)->layers[0].q_bias.empty());
  EXPECT_NE((*w)->lm_head.data, (*w)->embed_tokens.data);
  EXPECT_EQ((*w)->lm_head.name, "lm_head.weight");
}

TEST(LoadModel, qwen3_binds_q_and_k_norms) {
  TempDir dir;
  SmallModel m(Arch::kQwen3);
  m.write(dir.path());
  auto w = load_model(dir.path());
  ASSERT_TRUE(w.is_ok()) << w.error();
  EXPECT_EQ((*w)->layers[0].q_norm.shape, (std::vector<int64_t>{8}));
  EXPECT_EQ((*w)->layers[0].q_proj.shape, (std::vector<int64_t>{32, 16}));
  EXPECT_EQ((*w)->layers[0].o_proj.shape, (std::vector<int64_t>{16, 32}));
}

TEST(LoadModel, mixed_dtypes_per_tensor_are_accepted) {
  TempDir dir;
  SmallModel m(Arch::kQwen2);
  m.set_dtype("model.embed_tokens.weight", DType::kBF16);
  m.set_dtype("model.layers.0.self_attn.q_proj.weight", DType::kF16);
  m.write(dir.path());
  auto w = load_model(dir.path());
  ASSERT_TRUE(w.is_ok()) << w.error();
  EXPECT_EQ((*w)->embed_tokens.dtype, DType::kBF16);
  EXPECT_EQ((*w)->layers[0].q_proj.dtype, DType::kF16);
  EXPECT_EQ((*w)->layers[0].k_proj.dtype, DType::kF32);
}

TEST(LoadModel, wrong_shape_names_file_tensor_expected_and_actual) {
  TempDir dir;
  SmallModel m(Arch::kQwen2);
  m.set_shape("model.layers.1.mlp.up_proj.weight", {16, 24});
  m.write(dir.path());
  auto w = load_model(dir.path());
  ASSERT_FALSE(w.is_ok());
  EXPECT_THAT(w.error(), AllOf(HasSubstr((dir / "model.safetensors").string()),
                               HasSubstr("model.layers.1.mlp.up_proj.weight"), HasSubstr("[16, 24]"),
                               HasSubstr("expected shape [24, 16]"), HasSubstr("F32")));
}

TEST(LoadModel, missing_tensor_names_directory_and_tensor) {
  TempDir dir;
  SmallModel m(Arch::kQwen2);
  m.remove("model.layers.0.self_attn.v_proj.bias");
  m.write(dir.path());
  auto w = load_model(dir.path());
  ASSERT_FALSE(w.is_ok());
  EXPECT_THAT(w.error(), AllOf(HasSubstr(dir.path().string()), HasSubstr("model.layers.0.self_attn.v_proj.bias"),
                               HasSubstr("[8]")));
}

TEST(LoadModel, untied_model_without_lm_head_fails) {
  TempDir dir;
  SmallModel m(Arch::kLlama, /*tied=*/false);
  m.remove("lm_head.weight");
  m.write(dir.path());
  auto w = load_model(dir.path());
  ASSERT_FALSE(w.is_ok());
  EXPECT_THAT(w.error(), HasSubstr("lm_head.weight"));
}

TEST(LoadModel, config_errors_name_config_file) {
  TempDir dir;
  SmallModel m(Arch::kQwen2);
  m.write(dir.path());
  write_bytes(dir / "config.json", R"({"architectures": ["GPT2LMHeadModel"]})");
  auto w = load_model(dir.path());
  ASSERT_FALSE(w.is_ok());
  EXPECT_THAT(w.error(), AllOf(HasSubstr((dir / "config.json").string()), HasSubstr("GPT2LMHeadModel")));
}

}  // namespace
}  // namespace mpserve::model
