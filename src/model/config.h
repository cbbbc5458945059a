// Hugging Face config.json -> ModelConfig, for the architectures mpserve runs.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "model/tensor.h"

namespace mpserve::model {

enum class Arch {
  kQwen2,  // Qwen2ForCausalLM (Qwen2, Qwen2.5): QKV bias
  kLlama,  // LlamaForCausalLM (Llama 3.x): optional rope scaling "llama3"
  kQwen3,  // Qwen3ForCausalLM: RMSNorm on q and k per head, no QKV bias
};

std::string_view arch_name(Arch a);  // the config.json "architectures" spelling

// rope_scaling {"rope_type": "llama3", ...}
struct Llama3RopeScaling {
  bool enabled = false;
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};

struct ModelConfig {
  Arch arch = Arch::kQwen2;
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;  // from config, else hidden_size / num_heads
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  Llama3RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // q/k/v projections carry a bias (Qwen2 always)
  bool qk_norm = false;         // per-head RMSNorm of q and k (Qwen3)
  DType torch_dtype = DType::kBF16;
  std::vector<int32_t> eos_token_ids;  // from config.json and generation_config.json
  int32_t bos_token_id = -1;

  int64_t q_dim() const { return num_heads * head_dim; }
  int64_t kv_dim() const { return num_kv_heads * head_dim; }
  // Parameter count of the weights (embeddings counted once when tied).
  int64_t num_parameters() const;
};

// Parses config.json text; `source` names the file in error messages.
Result<ModelConfig> parse_model_config(std::string_view json_text, const std::string& source);
// Reads DIR/config.json and, if present, DIR/generation_config.json (for eos ids).
Result<ModelConfig> load_model_config(const std::filesystem::path& dir);
// The config.json text for a config (used by make-model). Round-trips through parse_model_config.
std::string model_config_to_json(const ModelConfig& c);

// RoPE inverse frequencies (head_dim / 2 of them), with llama3 scaling applied when enabled.
// Shared by every backend so they rotate identically.
std::vector<float> rope_inv_freq(const ModelConfig& c);

}  // namespace mpserve::model
