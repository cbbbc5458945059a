// Hugging Face config.json <-> ModelConfig, and the RoPE frequencies every backend shares.
#include "model/config.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include <nlohmann/json.hpp>

#include "common/file_util.h"

namespace mpserve::model {

using nlohmann::json;

namespace {

// Largest accepted dimension: keeps every product in num_parameters() and the weight shapes far
// from int64 overflow, whatever a config file says.
constexpr int64_t kMaxDim = int64_t{1} << 24;

struct ArchInfo {
  Arch arch;
  std::string_view architecture;  // config.json "architectures"[0]
  std::string_view model_type;    // config.json "model_type"
  int64_t default_max_positions;  // the transformers config class default
};

constexpr ArchInfo kArchs[] = {
    {Arch::kQwen2, "Qwen2ForCausalLM", "qwen2", 32768},
    {Arch::kLlama, "LlamaForCausalLM", "llama", 2048},
    {Arch::kQwen3, "Qwen3ForCausalLM", "qwen3", 32768},
};

const ArchInfo& arch_info(Arch a) {
  for (const ArchInfo& info : kArchs) {
    if (info.arch == a) return info;
  }
  return kArchs[0];
}

// Reads fields of one JSON object, naming the file and field in every error.
class FieldReader {
 public:
  FieldReader(const json& obj, const std::string& source) : obj_(obj), source_(source) {}

  bool has(const char* key) const { return obj_.contains(key) && !obj_.at(key).is_null(); }

  Result<int64_t> integer(const char* key, int64_t min, int64_t max) const {
    if (!has(key)) return Status::errorf("{}: missing field '{}'", source_, key);
    return integer_value(obj_.at(key), key, min, max);
  }
  Result<int64_t> integer_or(const char* key, int64_t fallback, int64_t min, int64_t max) const {
    if (!has(key)) return fallback;
    return integer_value(obj_.at(key), key, min, max);
  }

  Result<double> number_or(const char* key, double fallback, double min, double max) const {
    if (!has(key)) return fallback;
    const json& v = obj_.at(key);
    if (!v.is_number()) return Status::errorf("{}: field '{}' must be a number", source_, key);
    double d = v.get<double>();
    if (!std::isfinite(d) || d < min || d > max) {
      return Status::errorf("{}: field '{}' = {} is out of range [{}, {}]", source_, key, d, min, max);
    }
    return d;
  }

  Result<bool> boolean_or(const char* key, bool fallback) const {
    if (!has(key)) return fallback;
    const json& v = obj_.at(key);
    if (!v.is_boolean()) return Status::errorf("{}: field '{}' must be true or false", source_, key);
    return v.get<bool>();
  }

  Result<std::string> string_or(const char* key, const std::string& fallback) const {
    if (!has(key)) return fallback;
    const json& v = obj_.at(key);
    if (!v.is_string()) return Status::errorf("{}: field '{}' must be a string", source_, key);
    return v.get<std::string>();
  }

  // A token id or a list of them (eos_token_id is either in HF configs).
  Result<std::vector<int32_t>> token_ids(const char* key) const {
    std::vector<int32_t> ids;
    if (!has(key)) return ids;
    const json& v = obj_.at(key);
    if (v.is_array()) {
      for (const json& e : v) {
        MPS_ASSIGN_OR_RETURN(int64_t id, integer_value(e, key, 0, std::numeric_limits<int32_t>::max()));
        ids.push_back(static_cast<int32_t>(id));
      }
      return ids;
    }
    MPS_ASSIGN_OR_RETURN(int64_t id, integer_value(v, key, 0, std::numeric_limits<int32_t>::max()));
    ids.push_back(static_cast<int32_t>(id));
    return ids;
  }

 private:
  Result<int64_t> integer_value(const json& v, const char* key, int64_t min, int64_t max) const {
    int64_t x = 0;
    if (v.is_number_unsigned()) {
      uint64_t u = v.get<uint64_t>();
      if (u > static_cast<uint64_t>(max)) {
        return Status::errorf("{}: field '{}' = {} is out of range [{}, {}]", source_, key, u, min, max);
      }
      x = static_cast<int64_t>(u);
    } else if (v.is_number_integer()) {
      x = v.get<int64_t>();
    } else {
      return Status::errorf("{}: field '{}' must be an integer", source_, key);
    }
    if (x < min || x > max) {
      return Status::errorf("{}: field '{}' = {} is out of range [{}, {}]", source_, key, x, min, max);
    }
    return x;
  }

  const json& obj_;
  const std::string& source_;
};

Result<Arch> parse_arch(const json& j, const std::string& source) {
  std::string name;
  if (j.contains("architectures") && !j.at("architectures").is_null()) {
    const json& a = j.at("architectures");
    if (!a.is_array() || a.empty() || !a.at(0).is_string()) {
      return Status::errorf("{}: field 'architectures' must be a non-empty list of strings", source);
    }
    name = a.at(0).get<std::string>();
    for (const ArchInfo& info : kArchs) {
      if (name == info.architecture) return info.arch;
    }
  } else if (j.contains("model_type") && j.at("model_type").is_string()) {
    name = j.at("model_type").get<std::string>();
    for (const ArchInfo& info : kArchs) {
      if (name == info.model_type) return info.arch;
    }
  } else {
    return Status::errorf("{}: missing field 'architectures'", source);
  }
  return Status::errorf("{}: unknown architecture '{}' (supported: Qwen2ForCausalLM, LlamaForCausalLM, Qwen3ForCausalLM)",
                        source, name);
}

Result<DType> parse_torch_dtype(const std::string& s, const std::string& source) {
  if (s == "bfloat16") return DType::kBF16;
  if (s == "float16" || s == "half") return DType::kF16;
  if (s == "float32" || s == "float") return DType::kF32;
  return Status::errorf("{}: field 'torch_dtype' = '{}' is not one of bfloat16, float16, float32", source, s);
}

std::string_view torch_dtype_name(DType t) {
  switch (t) {
    case DType::kBF16:
      return "bfloat16";
    case DType::kF16:
      return "float16";
    case DType::kF32:
      return "float32";
  }
  return "bfloat16";
}

Status parse_rope_scaling(const json& j, Arch arch, const std::string& source, Llama3RopeScaling* out) {
  if (!j.contains("rope_scaling") || j.at("rope_scaling").is_null()) return Status::ok();
  const json& rs = j.at("rope_scaling");
  if (!rs.is_object()) return Status::errorf("{}: field 'rope_scaling' must be an object or null", source);
  std::string scoped = source + " rope_scaling";
  FieldReader f(rs, scoped);
  // transformers accepts both spellings; "rope_type" wins when both are present.
  MPS_ASSIGN_OR_RETURN(std::string type, f.string_or("type", "default"));
  MPS_ASSIGN_OR_RETURN(type, f.string_or("rope_type", type));
  if (type == "default") return Status::ok();
  if (type != "llama3" || arch != Arch::kLlama) {
    return Status::errorf("{}: rope_scaling type '{}' is not supported for {} (only 'llama3' for LlamaForCausalLM)",
                          source, type, arch_name(arch));
  }
  out->enabled = true;
  MPS_ASSIGN_OR_RETURN(out->factor, f.number_or("factor", 0.0, 0.0, 1e6));
  MPS_ASSIGN_OR_RETURN(out->low_freq_factor, f.number_or("low_freq_factor", 0.0, 0.0, 1e6));
  MPS_ASSIGN_OR_RETURN(out->high_freq_factor, f.number_or("high_freq_factor", 0.0, 0.0, 1e6));
  MPS_ASSIGN_OR_RETURN(out->original_max_position_embeddings,
                       f.integer("original_max_position_embeddings", 1, kMaxDim));
  if (!f.has("factor") || !f.has("low_freq_factor") || !f.has("high_freq_factor")) {
    return Status::errorf("{}: llama3 rope_scaling needs factor, low_freq_factor and high_freq_factor", source);
  }
  if (out->factor < 1.0 || out->low_freq_factor <= 0.0 || out->high_freq_factor <= out->low_freq_factor) {
    return Status::errorf("{}: invalid llama3 rope_scaling (need factor >= 1 and 0 < low_freq_factor < high_freq_factor)",
                          source);
  }
  return Status::ok();
}

void append_unique(std::vector<int32_t>* ids, const std::vector<int32_t>& more) {
  for (int32_t id : more) {
    if (std::find(ids->begin(), ids->end(), id) == ids->end()) ids->push_back(id);
  }
}

}  // namespace

std::string_view arch_name(Arch a) { return arch_info(a).architecture; }

int64_t ModelConfig::num_parameters() const {
  int64_t per_layer = 2 * hidden_size                       // input and post-attention norms
                      + q_dim() * hidden_size                // q_proj
                      + 2 * kv_dim() * hidden_size           // k_proj, v_proj
                      + hidden_size * q_dim()                // o_proj
                      + 3 * intermediate_size * hidden_size;  // gate, up, down
  if (attention_bias) per_layer += q_dim() + 2 * kv_dim();
  if (qk_norm) per_layer += 2 * head_dim;
  int64_t embeddings = vocab_size * hidden_size * (tie_word_embeddings ? 1 : 2);
  return embeddings + hidden_size + num_layers * per_layer;
}

Result<ModelConfig> parse_model_config(std::string_view json_text, const std::string& source) {
  json j = json::parse(json_text.begin(), json_text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Status::errorf("{}: not valid JSON", source);
  if (!j.is_object()) return Status::errorf("{}: expected a JSON object", source);

  ModelConfig c;
  MPS_ASSIGN_OR_RETURN(c.arch, parse_arch(j, source));
  FieldReader f(j, source);
  MPS_ASSIGN_OR_RETURN(c.vocab_size, f.integer("vocab_size", 1, kMaxDim));
  MPS_ASSIGN_OR_RETURN(c.hidden_size, f.integer("hidden_size", 1, kMaxDim));
  MPS_ASSIGN_OR_RETURN(c.intermediate_size, f.integer("intermediate_size", 1, kMaxDim));
  MPS_ASSIGN_OR_RETURN(c.num_layers, f.integer("num_hidden_layers", 1, 4096));
  MPS_ASSIGN_OR_RETURN(c.num_heads, f.integer("num_attention_heads", 1, 4096));
  MPS_ASSIGN_OR_RETURN(c.num_kv_heads, f.integer_or("num_key_value_heads", c.num_heads, 1, 4096));
  if (c.num_heads % c.num_kv_heads != 0) {
    return Status::errorf("{}: num_attention_heads ({}) is not divisible by num_key_value_heads ({})", source,
                          c.num_heads, c.num_kv_heads);
  }
  if (f.has("head_dim")) {
    MPS_ASSIGN_OR_RETURN(c.head_dim, f.integer("head_dim", 2, 4096));
  } else {
    if (c.hidden_size % c.num_heads != 0) {
      return Status::errorf("{}: hidden_size ({}) is not divisible by num_attention_heads ({})", source,
                            c.hidden_size, c.num_heads);
    }
    c.head_dim = c.hidden_size / c.num_heads;
  }
  if (c.head_dim % 2 != 0) return Status::errorf("{}: head_dim ({}) must be even for RoPE", source, c.head_dim);
  MPS_ASSIGN_OR_RETURN(c.max_position_embeddings,
                       f.integer_or("max_position_embeddings", arch_info(c.arch).default_max_positions, 1, kMaxDim));
  MPS_ASSIGN_OR_RETURN(c.rms_norm_eps, f.number_or("rms_norm_eps", 1e-6, 0.0, 1.0));
  MPS_ASSIGN_OR_RETURN(c.rope_theta, f.number_or("rope_theta", 10000.0, 1.0, 1e12));
  MPS_RETURN_IF_ERROR(parse_rope_scaling(j, c.arch, source, &c.rope_scaling));
  MPS_ASSIGN_OR_RETURN(c.tie_word_embeddings, f.boolean_or("tie_word_embeddings", false));
  if (c.arch == Arch::kQwen2) {
    c.attention_bias = true;  // Qwen2Attention always has q/k/v bias; there is no config field.
  } else {
    MPS_ASSIGN_OR_RETURN(c.attention_bias, f.boolean_or("attention_bias", false));
  }
  c.qk_norm = c.arch == Arch::kQwen3;
  MPS_ASSIGN_OR_RETURN(std::string act, f.string_or("hidden_act", "silu"));
  if (act != "silu") return Status::errorf("{}: hidden_act '{}' is not supported (only silu)", source, act);
  MPS_ASSIGN_OR_RETURN(bool mlp_bias, f.boolean_or("mlp_bias", false));
  if (mlp_bias) return Status::errorf("{}: mlp_bias = true is not supported", source);
  MPS_ASSIGN_OR_RETURN(bool sliding, f.boolean_or("use_sliding_window", false));
  if (sliding) return Status::errorf("{}: use_sliding_window = true is not supported", source);
  // Newer transformers write "dtype"; older ones "torch_dtype".
  MPS_ASSIGN_OR_RETURN(std::string dtype, f.string_or("dtype", "bfloat16"));
  MPS_ASSIGN_OR_RETURN(dtype, f.string_or("torch_dtype", dtype));
  MPS_ASSIGN_OR_RETURN(c.torch_dtype, parse_torch_dtype(dtype, source));
  MPS_ASSIGN_OR_RETURN(c.eos_token_ids, f.token_ids("eos_token_id"));
  MPS_ASSIGN_OR_RETURN(int64_t bos, f.integer_or("bos_token_id", -1, -1, std::numeric_limits<int32_t>::max()));
  c.bos_token_id = static_cast<int32_t>(bos);
  return c;
}

Result<ModelConfig> load_model_config(const std::filesystem::path& dir) {
  std::filesystem::path config_path = dir / "config.json";
  MPS_ASSIGN_OR_RETURN(std::string text, read_file(config_path));
  MPS_ASSIGN_OR_RETURN(ModelConfig c, parse_model_config(text, config_path.string()));

  std::filesystem::path gen_path = dir / "generation_config.json";
  std::error_code ec;
  if (std::filesystem::exists(gen_path, ec)) {
    MPS_ASSIGN_OR_RETURN(std::string gen_text, read_file(gen_path));
    json g = json::parse(gen_text, nullptr, /*allow_exceptions=*/false);
    if (g.is_discarded() || !g.is_object()) return Status::errorf("{}: not a JSON object", gen_path.string());
    std::string gen_source = gen_path.string();
    MPS_ASSIGN_OR_RETURN(std::vector<int32_t> gen_eos, FieldReader(g, gen_source).token_ids("eos_token_id"));
    append_unique(&c.eos_token_ids, gen_eos);
  }
  return c;
}

std::string model_config_to_json(const ModelConfig& c) {
  nlohmann::ordered_json j;
  const ArchInfo& info = arch_info(c.arch);
  j["architectures"] = {std::string(info.architecture)};
  j["model_type"] = std::string(info.model_type);
  j["hidden_act"] = "silu";
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["num_hidden_layers"] = c.num_layers;
  j["num_attention_heads"] = c.num_heads;
  j["num_key_value_heads"] = c.num_kv_heads;
  j["head_dim"] = c.head_dim;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["rope_theta"] = c.rope_theta;
  if (c.rope_scaling.enabled) {
    j["rope_scaling"] = {{"rope_type", "llama3"},
                         {"factor", c.rope_scaling.factor},
                         {"low_freq_factor", c.rope_scaling.low_freq_factor},
                         {"high_freq_factor", c.rope_scaling.high_freq_factor},
                         {"original_max_position_embeddings", c.rope_scaling.original_max_position_embeddings}};
  } else {
    j["rope_scaling"] = nullptr;
  }
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  if (c.arch != Arch::kQwen2) j["attention_bias"] = c.attention_bias;
  if (c.arch != Arch::kLlama) j["use_sliding_window"] = false;
  j["torch_dtype"] = std::string(torch_dtype_name(c.torch_dtype));
  if (c.bos_token_id >= 0) j["bos_token_id"] = c.bos_token_id;
  if (c.eos_token_ids.size() == 1) {
    j["eos_token_id"] = c.eos_token_ids[0];
  } else if (!c.eos_token_ids.empty()) {
    j["eos_token_id"] = c.eos_token_ids;
  }
  j["use_cache"] = true;
  return j.dump(2) + "\n";
}

std::vector<float> rope_inv_freq(const ModelConfig& c) {
  const int64_t half = c.head_dim / 2;
  std::vector<float> out(static_cast<size_t>(half));
  const Llama3RopeScaling& s = c.rope_scaling;
  for (int64_t i = 0; i < half; ++i) {
    double inv = 1.0 / std::pow(c.rope_theta, static_cast<double>(2 * i) / static_cast<double>(c.head_dim));
    if (s.enabled) {
      // note: transformers' _compute_llama3_parameters. Wavelengths shorter than
      // original_max_position_embeddings / high_freq_factor keep their frequency, those longer than
      // original / low_freq_factor are divided by `factor`, and the band between interpolates
      // linearly in (original / wavelength).
      const double old_len = static_cast<double>(s.original_max_position_embeddings);
      const double low_freq_wavelen = old_len / s.low_freq_factor;
      const double high_freq_wavelen = old_len / s.high_freq_factor;
      const double wavelen = 2.0 * M_PI / inv;
      if (wavelen > low_freq_wavelen) {
        inv = inv / s.factor;
      } else if (wavelen >= high_freq_wavelen) {
        double smooth = (old_len / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
        inv = (1.0 - smooth) * inv / s.factor + smooth * inv;
      }
    }
    out[static_cast<size_t>(i)] = static_cast<float>(inv);
  }
  return out;
}

}  // namespace mpserve::model
