// A loaded model: config plus every weight bound through one validating lookup.
#pragma once

#include <filesystem>
#include <memory>
#include <vector>

#include "common/status.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "model/tensor.h"

namespace mpserve::model {

// Shapes in comments use H = hidden_size, Q = num_heads*head_dim, K = num_kv_heads*head_dim,
// I = intermediate_size, D = head_dim, V = vocab_size. Linear weights are [out, in] as in torch.
struct LayerWeights {
  TensorView input_norm;      // (H)
  TensorView q_proj;          // (Q, H)
  TensorView k_proj;          // (K, H)
  TensorView v_proj;          // (K, H)
  TensorView q_bias;          // (Q)  empty unless attention_bias
  TensorView k_bias;          // (K)  empty unless attention_bias
  TensorView v_bias;          // (K)  empty unless attention_bias
  TensorView q_norm;          // (D)  empty unless qk_norm
  TensorView k_norm;          // (D)  empty unless qk_norm
  TensorView o_proj;          // (H, Q)
  TensorView post_attn_norm;  // (H)
  TensorView gate_proj;       // (I, H)
  TensorView up_proj;         // (I, H)
  TensorView down_proj;       // (H, I)
};

struct ModelWeights {
  ModelConfig config;
  std::filesystem::path dir;
  std::unique_ptr<TensorStore> store;  // owns the mapped bytes every view points into
  TensorView embed_tokens;             // (V, H)
  TensorView final_norm;               // (H)
  TensorView lm_head;                  // (V, H)  same bytes as embed_tokens when tied
  std::vector<LayerWeights> layers;
};

// Loads config.json and the safetensors of `dir`, binding and validating every tensor
// (present, dtype one of bf16/f16/f32, shape as the config implies). Errors name the file
// and tensor, with expected and actual shape.
Result<std::unique_ptr<ModelWeights>> load_model(const std::filesystem::path& dir);

}  // namespace mpserve::model
