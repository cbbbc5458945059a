// `mpserve make-model`: known public shapes, and a random-weight Hugging Face directory writer
// that streams tensors to disk (a 7B model is 15 GB; it is never held in memory).
#include "model/model_writer.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <future>

#include <nlohmann/json.hpp>

#include "common/file_util.h"
#include "common/half.h"
#include "common/log.h"
#include "common/thread_pool.h"
#include "model/llama3_tokenizer.h"
#include "model/safetensors.h"

namespace mpserve::model {

namespace {

constexpr int32_t kQwenBos = 151643;                      // <|endoftext|>
const std::vector<int32_t> kQwenEos = {151643, 151645};   // <|endoftext|>, <|im_end|>
constexpr int32_t kLlamaBos = 128000;                     // <|begin_of_text|>
const std::vector<int32_t> kLlamaEos = {128001, 128008, 128009};  // end_of_text, eom_id, eot_id

ModelConfig qwen2(int64_t hidden, int64_t layers, int64_t heads, int64_t kv_heads, int64_t intermediate,
                  int64_t vocab, bool tied) {
  ModelConfig c;
  c.arch = Arch::kQwen2;
  c.vocab_size = vocab;
  c.hidden_size = hidden;
  c.intermediate_size = intermediate;
  c.num_layers = layers;
  c.num_heads = heads;
  c.num_kv_heads = kv_heads;
  c.head_dim = hidden / heads;
  c.max_position_embeddings = 32768;  // the -Instruct configs (the 7B base says 131072)
  c.rms_norm_eps = 1e-6;
  c.rope_theta = 1e6;
  c.tie_word_embeddings = tied;
  c.attention_bias = true;
  c.torch_dtype = DType::kBF16;
  c.bos_token_id = kQwenBos;
  c.eos_token_ids = {151645};
  return c;
}

ModelConfig llama32_1b() {
  ModelConfig c;
  c.arch = Arch::kLlama;
  c.vocab_size = 128256;
  c.hidden_size = 2048;
  c.intermediate_size = 8192;
  c.num_layers = 16;
  c.num_heads = 32;
  c.num_kv_heads = 8;
  c.head_dim = 64;
  c.max_position_embeddings = 131072;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 500000.0;
  c.rope_scaling = Llama3RopeScaling{true, 32.0, 1.0, 4.0, 8192};
  c.tie_word_embeddings = true;
  c.attention_bias = false;
  c.torch_dtype = DType::kBF16;
  c.bos_token_id = kLlamaBos;
  c.eos_token_ids = kLlamaEos;
  return c;
}

// How one tensor's values are drawn: value = offset + scale * u, u ~ U(-1, 1).
struct InitSpec {
  float scale = 0.0f;
  float offset = 0.0f;
};

struct PlannedTensor {
  SafetensorsEntry entry;
  InitSpec init;
};

// note: initialisation for a pre-norm transformer that must stay finite and give varied logits
// over hundreds of tokens. Every sublayer reads an RMS-normalised (unit-RMS) input, so
//  * q/k/v/gate/up are U(+-sqrt(3/in)): unit-variance outputs, attention scores of std ~1;
//  * o_proj and down_proj carry a gain of 2.5/sqrt(L) and 4/sqrt(L) (down also makes up for
//    silu(g)*u having variance ~0.35), so each sublayer adds O(1/L) variance and the residual
//    grows slowly to an RMS of ~2-3 after L layers instead of exploding;
//  * embeddings (and an untied lm_head) have per-entry std 2/sqrt(H): logits = norm(h) . e_v then
//    have std ~2 — peaked enough to prefer some tokens, flat enough not to be one-hot. Because
//    the residual from the layers (RMS ~2-3) dominates the raw embedding (RMS 2/sqrt(H)), a tied
//    model does not simply predict its own input token again;
//  * norms are 1 +- 0.05 and biases +-0.1, so they matter a little without dominating.
std::vector<PlannedTensor> plan_tensors(const ModelConfig& c) {
  const int64_t H = c.hidden_size, Q = c.q_dim(), K = c.kv_dim(), I = c.intermediate_size, D = c.head_dim,
                V = c.vocab_size;
  const float L = static_cast<float>(c.num_layers);
  const auto linear = [](int64_t in, float gain) { return InitSpec{gain * std::sqrt(3.0f / static_cast<float>(in)), 0}; };
  const InitSpec embed{2.0f * std::sqrt(3.0f / static_cast<float>(H)), 0.0f};
  const InitSpec norm{0.05f, 1.0f};
  const InitSpec bias{0.1f, 0.0f};
  const float out_gain = 2.5f / std::sqrt(L);
  const float down_gain = 4.0f / std::sqrt(L);

  std::vector<PlannedTensor> t;
  auto add = [&](std::string name, std::vector<int64_t> shape, InitSpec init) {
    PlannedTensor p;
    p.entry.name = std::move(name);
    p.entry.dtype = DType::kBF16;
    p.entry.shape = std::move(shape);
    p.init = init;
    t.push_back(std::move(p));
  };
  add("model.embed_tokens.weight", {V, H}, embed);
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    add(p + "input_layernorm.weight", {H}, norm);
    add(p + "self_attn.q_proj.weight", {Q, H}, linear(H, 1.0f));
    add(p + "self_attn.k_proj.weight", {K, H}, linear(H, 1.0f));
    add(p + "self_attn.v_proj.weight", {K, H}, linear(H, 1.0f));
    if (c.attention_bias) {
      add(p + "self_attn.q_proj.bias", {Q}, bias);
      add(p + "self_attn.k_proj.bias", {K}, bias);
      add(p + "self_attn.v_proj.bias", {K}, bias);
    }
    if (c.qk_norm) {
      add(p + "self_attn.q_norm.weight", {D}, norm);
      add(p + "self_attn.k_norm.weight", {D}, norm);
    }
    add(p + "self_attn.o_proj.weight", {H, Q}, linear(Q, out_gain));
    add(p + "post_attention_layernorm.weight", {H}, norm);
    add(p + "mlp.gate_proj.weight", {I, H}, linear(H, 1.0f));
    add(p + "mlp.up_proj.weight", {I, H}, linear(H, 1.0f));
    add(p + "mlp.down_proj.weight", {H, I}, linear(I, down_gain));
  }
  add("model.norm.weight", {H}, norm);
  if (!c.tie_word_embeddings) add("lm_head.weight", {V, H}, embed);
  return t;
}

uint64_t splitmix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

uint64_t fnv1a64(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char ch : s) h = (h ^ ch) * 0x100000001b3ull;
  return h;
}

// note: counter-based RNG. Element i of a tensor is splitmix64(key + i * golden), so any chunk
// can be generated by any thread in any order and the bytes depend only on (seed, name, i).
void fill_bf16(uint64_t key, InitSpec init, uint64_t first, uint64_t n, uint16_t* out) {
  constexpr uint64_t kGolden = 0x9e3779b97f4a7c15ull;
  constexpr float kInv2p31 = 1.0f / 2147483648.0f;
  for (uint64_t i = 0; i < n; ++i) {
    uint64_t h = splitmix64(key + (first + i + 1) * kGolden);
    float u = static_cast<float>(static_cast<int32_t>(h >> 32)) * kInv2p31;  // [-1, 1)
    out[i] = f32_to_bf16(init.offset + init.scale * u);
  }
}

Status write_weights(const std::filesystem::path& path, const ModelConfig& c, uint64_t seed) {
  std::vector<PlannedTensor> plan = plan_tensors(c);
  std::vector<SafetensorsEntry> entries;
  for (const PlannedTensor& p : plan) entries.push_back(p.entry);
  const std::string header = safetensors_header_bytes(&entries, {{"format", "pt"}});

  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return Status::errorf("cannot create {}: {}", path.string(), std::strerror(errno));
  bool ok = std::fwrite(header.data(), 1, header.size(), f) == header.size();

  // Two chunk buffers: threads fill one while the previous one is being written.
  constexpr uint64_t kChunk = uint64_t{1} << 23;  // elements (16 MB of bf16)
  std::vector<uint16_t> buffers[2] = {std::vector<uint16_t>(kChunk), std::vector<uint16_t>(kChunk)};
  std::future<bool> pending;
  int which = 0;
  ThreadPool pool(0);
  const uint64_t seed_key = splitmix64(seed ^ 0x6d706d6f64656c31ull);
  for (size_t t = 0; t < plan.size() && ok; ++t) {
    const uint64_t numel = (entries[t].end - entries[t].begin) / 2;
    const uint64_t key = splitmix64(seed_key ^ fnv1a64(entries[t].name));
    for (uint64_t first = 0; first < numel && ok; first += kChunk) {
      const uint64_t n = std::min(kChunk, numel - first);
      uint16_t* buf = buffers[which].data();
      pool.parallel_for(static_cast<int64_t>(n), [&](int64_t b, int64_t e) {
        fill_bf16(key, plan[t].init, first + static_cast<uint64_t>(b), static_cast<uint64_t>(e - b), buf + b);
      });
      if (pending.valid()) ok = pending.get();
      pending = std::async(std::launch::async, [f, buf, n] { return std::fwrite(buf, 2, n, f) == n; });
      which ^= 1;
    }
  }
  if (pending.valid()) ok = pending.get() && ok;
  ok = (std::fclose(f) == 0) && ok;
  if (!ok) return Status::errorf("cannot write {}: {}", path.string(), std::strerror(errno));
  return Status::ok();
}

std::string generation_config_json(const ModelConfig& c) {
  nlohmann::ordered_json j;
  j["bos_token_id"] = c.bos_token_id;
  j["eos_token_id"] = c.arch == Arch::kLlama ? kLlamaEos : kQwenEos;
  j["do_sample"] = false;
  return j.dump(2) + "\n";
}

Status write_tokenizer(const MakeModelOptions& opts, const ModelConfig& c) {
  std::filesystem::path src = opts.tokenizer_source_dir;
  if (src.empty()) {
    MPS_ASSIGN_OR_RETURN(src, find_tokenizer_source_dir());
  }
  MPS_ASSIGN_OR_RETURN(std::string tok, read_file(src / "tokenizer.json"));
  MPS_ASSIGN_OR_RETURN(std::string tok_config, read_file(src / "tokenizer_config.json"));
  if (c.arch == Arch::kLlama) {
    MPS_ASSIGN_OR_RETURN(tok, derive_llama3_tokenizer_json(tok, (src / "tokenizer.json").string()));
    tok_config = llama3_tokenizer_config_json();
  }
  MPS_RETURN_IF_ERROR(write_file_atomic(opts.out_dir / "tokenizer.json", tok));
  return write_file_atomic(opts.out_dir / "tokenizer_config.json", tok_config);
}

}  // namespace

std::vector<std::string> known_shapes() {
  return {"tiny", "qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-3b", "qwen2.5-7b", "llama3.2-1b"};
}

Result<ModelConfig> shape_config(const std::string& shape) {
  // Dimensions as in the public Hugging Face configs of Qwen/Qwen2.5-*-Instruct and
  // meta-llama/Llama-3.2-1B-Instruct.
  if (shape == "tiny") {
    // note: head_dim 64 (hidden 256 = 4 heads x 64) so the CUDA kernels, which take head_dim 64
    // or 128, run the embedded default too.
    return qwen2(256, 4, 4, 2, 768, 151936, true);
  }
  if (shape == "qwen2.5-0.5b") return qwen2(896, 24, 14, 2, 4864, 151936, true);
  if (shape == "qwen2.5-1.5b") return qwen2(1536, 28, 12, 2, 8960, 151936, true);
  if (shape == "qwen2.5-3b") return qwen2(2048, 36, 16, 2, 11008, 151936, true);
  if (shape == "qwen2.5-7b") return qwen2(3584, 28, 28, 4, 18944, 152064, false);
  if (shape == "llama3.2-1b") return llama32_1b();
  std::string known;
  for (const std::string& s : known_shapes()) known += (known.empty() ? "" : ", ") + s;
  return Status::errorf("unknown model shape '{}' (known: {})", shape, known);
}

Status make_model(const MakeModelOptions& opts) {
  MPS_ASSIGN_OR_RETURN(ModelConfig c, shape_config(opts.shape));
  if (opts.out_dir.empty()) return Status::error("make-model: no output directory given");
  std::error_code ec;
  std::filesystem::create_directories(opts.out_dir, ec);
  if (ec) return Status::errorf("cannot create {}: {}", opts.out_dir.string(), ec.message());
  // A stale shard index would take precedence over the model.safetensors written here.
  std::filesystem::remove(opts.out_dir / "model.safetensors.index.json", ec);

  MPS_RETURN_IF_ERROR(write_tokenizer(opts, c));
  MPS_RETURN_IF_ERROR(write_file_atomic(opts.out_dir / "config.json", model_config_to_json(c)));
  MPS_RETURN_IF_ERROR(write_file_atomic(opts.out_dir / "generation_config.json", generation_config_json(c)));
  const std::filesystem::path weights = opts.out_dir / "model.safetensors";
  std::filesystem::path tmp = weights;
  tmp += ".partial";
  MPS_RETURN_IF_ERROR(write_weights(tmp, c, opts.seed));
  std::filesystem::rename(tmp, weights, ec);
  if (ec) return Status::errorf("cannot rename {} to {}: {}", tmp.string(), weights.string(), ec.message());
  log::debug("make-model: wrote {} ({} parameters) to {}", opts.shape, c.num_parameters(), opts.out_dir.string());
  return Status::ok();
}

}  // namespace mpserve::model
