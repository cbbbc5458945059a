// load_model: config.json plus every weight, each bound through one validating lookup.
#include "model/weights.h"

#include <fmt/format.h>

namespace mpserve::model {

namespace {

std::string shape_str(const std::vector<int64_t>& shape) { return TensorView{{}, DType::kF32, shape}.shape_string(); }

// The one validating lookup: the tensor exists (unless optional), its dtype is one we compute
// with, and its shape is exactly what the config implies. Errors name file, tensor, expected
// and actual shape and dtype.
Result<TensorView> bind(const TensorStore& store, const std::filesystem::path& dir, const std::string& name,
                        const std::vector<int64_t>& expected, bool optional = false) {
  if (!store.contains(name)) {
    if (optional) return TensorView{};
    return Status::errorf("{}: missing tensor '{}' (expected shape {})", dir.string(), name, shape_str(expected));
  }
  MPS_ASSIGN_OR_RETURN(TensorView v, store.tensor(name));
  const std::string file = store.file_of(name);
  if (v.dtype != DType::kBF16 && v.dtype != DType::kF16 && v.dtype != DType::kF32) {
    return Status::errorf("{}: tensor '{}' has dtype {}, expected BF16, F16 or F32", file, name, dtype_name(v.dtype));
  }
  if (v.shape != expected) {
    return Status::errorf("{}: tensor '{}' has shape {} {}, expected shape {}", file, name, v.shape_string(),
                          dtype_name(v.dtype), shape_str(expected));
  }
  return v;
}

}  // namespace

Result<std::unique_ptr<ModelWeights>> load_model(const std::filesystem::path& dir) {
  auto w = std::make_unique<ModelWeights>();
  w->dir = dir;
  MPS_ASSIGN_OR_RETURN(w->config, load_model_config(dir));
  MPS_ASSIGN_OR_RETURN(w->store, TensorStore::open_dir(dir));
  const ModelConfig& c = w->config;
  const TensorStore& s = *w->store;
  const int64_t H = c.hidden_size, Q = c.q_dim(), K = c.kv_dim(), I = c.intermediate_size, D = c.head_dim,
                V = c.vocab_size;

  MPS_ASSIGN_OR_RETURN(w->embed_tokens, bind(s, dir, "model.embed_tokens.weight", {V, H}));
  MPS_ASSIGN_OR_RETURN(w->final_norm, bind(s, dir, "model.norm.weight", {H}));
  if (c.tie_word_embeddings) {
    // note: as in transformers, a tied model uses the embedding matrix even when the file also
    // carries an lm_head.weight.
    w->lm_head = w->embed_tokens;
  } else {
    MPS_ASSIGN_OR_RETURN(w->lm_head, bind(s, dir, "lm_head.weight", {V, H}));
  }

  w->layers.resize(static_cast<size_t>(c.num_layers));
  for (int64_t i = 0; i < c.num_layers; ++i) {
    LayerWeights& l = w->layers[static_cast<size_t>(i)];
    const std::string p = fmt::format("model.layers.{}.", i);
    MPS_ASSIGN_OR_RETURN(l.input_norm, bind(s, dir, p + "input_layernorm.weight", {H}));
    MPS_ASSIGN_OR_RETURN(l.q_proj, bind(s, dir, p + "self_attn.q_proj.weight", {Q, H}));
    MPS_ASSIGN_OR_RETURN(l.k_proj, bind(s, dir, p + "self_attn.k_proj.weight", {K, H}));
    MPS_ASSIGN_OR_RETURN(l.v_proj, bind(s, dir, p + "self_attn.v_proj.weight", {K, H}));
    if (c.attention_bias) {
      MPS_ASSIGN_OR_RETURN(l.q_bias, bind(s, dir, p + "self_attn.q_proj.bias", {Q}));
      MPS_ASSIGN_OR_RETURN(l.k_bias, bind(s, dir, p + "self_attn.k_proj.bias", {K}));
      MPS_ASSIGN_OR_RETURN(l.v_bias, bind(s, dir, p + "self_attn.v_proj.bias", {K}));
    }
    if (c.qk_norm) {
      MPS_ASSIGN_OR_RETURN(l.q_norm, bind(s, dir, p + "self_attn.q_norm.weight", {D}));
      MPS_ASSIGN_OR_RETURN(l.k_norm, bind(s, dir, p + "self_attn.k_norm.weight", {D}));
    }
    MPS_ASSIGN_OR_RETURN(l.o_proj, bind(s, dir, p + "self_attn.o_proj.weight", {H, Q}));
    MPS_ASSIGN_OR_RETURN(l.post_attn_norm, bind(s, dir, p + "post_attention_layernorm.weight", {H}));
    MPS_ASSIGN_OR_RETURN(l.gate_proj, bind(s, dir, p + "mlp.gate_proj.weight", {I, H}));
    MPS_ASSIGN_OR_RETURN(l.up_proj, bind(s, dir, p + "mlp.up_proj.weight", {I, H}));
    MPS_ASSIGN_OR_RETURN(l.down_proj, bind(s, dir, p + "mlp.down_proj.weight", {H, I}));
  }
  return w;
}

}  // namespace mpserve::model
