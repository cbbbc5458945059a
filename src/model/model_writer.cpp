// `mpserve make-model`: known public shapes, and a random-weight Hugging Face directory writer
// that streams tensors to disk (a 7B model is 15 GB; it is never held in memory).
#include "model/model_writer.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <future>
#include <memory>

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

// Per-entry std of tiny's embedding (plan_tensors' note on peaked_head: a sweep picked it).
constexpr float kPeakedEmbedStd = 1.4f;

// How one tensor's values are drawn: value = offset + scale * u, u ~ U(-1, 1).
struct InitSpec {
  float scale = 0.0f;
  float offset = 0.0f;
};

// Where a tensor's u come from when not from its own stream: row r of this (rows, row_len) tensor
// takes the u of row (*rows)[r] of tensor `tensor` (kOwnRow: its own). Used for an lm_head made
// of permuted embedding rows.
struct RowSource {
  std::string tensor;
  std::shared_ptr<const std::vector<uint32_t>> rows;  // (rows)
  int64_t row_len = 0;
};

struct PlannedTensor {
  SafetensorsEntry entry;
  InitSpec init;
  RowSource row_source;  // empty tensor: the tensor's own stream
};

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

// The key of a tensor's random stream: a function of the seed and the tensor's name only.
uint64_t stream_key(uint64_t seed, std::string_view name) {
  return splitmix64(splitmix64(seed ^ 0x6d706d6f64656c31ull) ^ fnv1a64(name));
}

// A RowSource entry for a row that keeps the tensor's own stream.
constexpr uint32_t kOwnRow = 0xffffffffu;

// A random cyclic order of the ordinary token ids [0, n): (v) the id whose successor is v, so
// following successors from any id visits all n before it comes back (no fixed point, no short
// loop). Ids from n up (special and padding rows) keep kOwnRow.
std::shared_ptr<const std::vector<uint32_t>> predecessor_cycle(int64_t vocab, int64_t n, uint64_t seed) {
  std::vector<uint32_t> order(static_cast<size_t>(n));
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<uint32_t>(i);
  uint64_t state = splitmix64(seed ^ 0x6379636c65000000ull);  // Fisher-Yates
  for (size_t i = order.size() - 1; i > 0; --i) {
    state = splitmix64(state);
    std::swap(order[i], order[state % (i + 1)]);
  }
  auto pred = std::make_shared<std::vector<uint32_t>>(static_cast<size_t>(vocab), kOwnRow);
  for (size_t i = 0; i < order.size(); ++i) (*pred)[order[(i + 1) % order.size()]] = order[i];
  return pred;
}

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
// That alone gives logits ~N(0, 2^2) over the vocabulary with no clear winner: the top-2 gap is
// below 0.05 at 10% of positions, where bf16 activations flip the greedy token against the f32 CPU
// (2.5% of tokens on the tied tiny of weights v2). A trained model's next-token choice is peaked,
// so `tiny` (peaked_head) plants a next-token map:
//  * its lm_head is untied, and row v is the embedding row of pred(v) (at std 2/sqrt(H), i.e. the
//    same logit scale), pred a random cycle through the ordinary ids: the input token x's own
//    embedding, carried in the residual, scores its successor succ(x) = pred^-1(x) above the
//    other logits. Following successors visits every ordinary id once, so greedy text never
//    settles into a repeated token or a short loop; special and padding ids get rows of their own;
//  * the embedding's per-entry std is kPeakedEmbedStd, large against the layers' residual of
//    RMS ~2-3, so x's embedding stays a fixed share of the final hidden state. Measured on the CPU
//    (tests/model/tiny_margin_test.cpp, 8 prompts x 64 greedy steps): top-2 gap p1 2.1, p50 6.6
//    (was 0.010 and 0.33), top-1 probability p50 0.83. The std was chosen from a sweep: 1.0 gives
//    p1 0.03, 1.25 p1 0.45, 1.4 p1 2.1, 1.5 p1 3.2 with top-1 probability p50 0.94 (sampling at
//    temperature 1 then mostly repeats the greedy text).
// The layers still move every logit by O(2), so logits, softmax and sampling depend on the whole
// context; the greedy token is succ(x) unless the context pushes another token past it.
// `tiny-plain` keeps the first part alone (tied, no map: tiny's bytes of weights v2), so its greedy
// token is decided by the whole context. Tests that compare two attention / KV-cache paths by
// exact greedy tokens use it: on tiny, a path that garbles attention still mostly emits succ(x).
std::vector<PlannedTensor> plan_tensors(const ModelConfig& c, bool peaked_head, uint64_t seed) {
  const int64_t H = c.hidden_size, Q = c.q_dim(), K = c.kv_dim(), I = c.intermediate_size, D = c.head_dim,
                V = c.vocab_size;
  const float L = static_cast<float>(c.num_layers);
  const auto linear = [](int64_t in, float gain) { return InitSpec{gain * std::sqrt(3.0f / static_cast<float>(in)), 0}; };
  // Per-entry std 2/sqrt(H) (U(-a, a) has std a/sqrt(3)); written as before so that the shapes
  // without peaked_head keep their exact bytes.
  const InitSpec head{2.0f * std::sqrt(3.0f / static_cast<float>(H)), 0.0f};
  const InitSpec embed = peaked_head ? InitSpec{kPeakedEmbedStd * std::sqrt(3.0f), 0.0f} : head;
  const InitSpec norm{0.05f, 1.0f};
  const InitSpec bias{0.1f, 0.0f};
  const float out_gain = 2.5f / std::sqrt(L);
  const float down_gain = 4.0f / std::sqrt(L);

  std::vector<PlannedTensor> t;
  auto add = [&](std::string name, std::vector<int64_t> shape, InitSpec init, RowSource rows = {}) {
    PlannedTensor p;
    p.entry.name = std::move(name);
    p.entry.dtype = DType::kBF16;
    p.entry.shape = std::move(shape);
    p.init = init;
    p.row_source = std::move(rows);
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
  if (!c.tie_word_embeddings) {
    RowSource rows;
    // Qwen's special tokens start at its bos id (<|endoftext|>, 151643); every id below is ordinary.
    if (peaked_head) rows = {"model.embed_tokens.weight", predecessor_cycle(V, c.bos_token_id, seed), H};
    add("lm_head.weight", {V, H}, head, std::move(rows));
  }
  return t;
}

// note: counter-based RNG. Element i of a tensor is splitmix64(key + i * golden), so any chunk
// can be generated by any thread in any order and the bytes depend only on (seed, name, i).
void fill_bf16(uint64_t key, uint64_t rows_key, const PlannedTensor& t, uint64_t first, uint64_t n, uint16_t* out) {
  constexpr uint64_t kGolden = 0x9e3779b97f4a7c15ull;
  constexpr float kInv2p31 = 1.0f / 2147483648.0f;
  for (uint64_t i = first; i < first + n; ++i) {
    uint64_t k = key, idx = i;
    if (t.row_source.rows) {
      const uint64_t row_len = static_cast<uint64_t>(t.row_source.row_len);
      const uint32_t src = (*t.row_source.rows)[i / row_len];
      if (src != kOwnRow) k = rows_key, idx = src * row_len + i % row_len;
    }
    uint64_t h = splitmix64(k + (idx + 1) * kGolden);
    float u = static_cast<float>(static_cast<int32_t>(h >> 32)) * kInv2p31;  // [-1, 1)
    out[i - first] = f32_to_bf16(t.init.offset + t.init.scale * u);
  }
}

Status write_weights(const std::filesystem::path& path, const ModelConfig& c, bool peaked_head, uint64_t seed) {
  std::vector<PlannedTensor> plan = plan_tensors(c, peaked_head, seed);
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
  for (size_t t = 0; t < plan.size() && ok; ++t) {
    const uint64_t numel = (entries[t].end - entries[t].begin) / 2;
    const uint64_t key = stream_key(seed, entries[t].name);
    const uint64_t rows_key = stream_key(seed, plan[t].row_source.tensor);
    for (uint64_t first = 0; first < numel && ok; first += kChunk) {
      const uint64_t n = std::min(kChunk, numel - first);
      uint16_t* buf = buffers[which].data();
      pool.parallel_for(static_cast<int64_t>(n), [&](int64_t b, int64_t e) {
        fill_bf16(key, rows_key, plan[t], first + static_cast<uint64_t>(b), static_cast<uint64_t>(e - b), buf + b);
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
  return {"tiny", "tiny-plain", "qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-3b", "qwen2.5-7b", "llama3.2-1b"};
}

Result<ModelConfig> shape_config(const std::string& shape) {
  // Dimensions as in the public Hugging Face configs of Qwen/Qwen2.5-*-Instruct and
  // meta-llama/Llama-3.2-1B-Instruct.
  if (shape == "tiny") {
    // note: head_dim 64 (hidden 256 = 4 heads x 64) so the CUDA kernels, which take head_dim 64
    // or 128, run the embedded default too.
    // Untied: its lm_head is the planted next-token map of plan_tensors (the 7B is untied too).
    return qwen2(256, 4, 4, 2, 768, 151936, false);
  }
  // tiny's dimensions, tied, plain random weights (plan_tensors' note).
  if (shape == "tiny-plain") return qwen2(256, 4, 4, 2, 768, 151936, true);
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
  // note: only tiny plants the next-token map (plan_tensors); tiny-plain and the public shapes keep
  // plain random weights, so their golden data and benchmark results stay as recorded.
  MPS_RETURN_IF_ERROR(write_weights(tmp, c, opts.shape == "tiny", opts.seed));
  std::filesystem::rename(tmp, weights, ec);
  if (ec) return Status::errorf("cannot rename {} to {}: {}", tmp.string(), weights.string(), ec.message());
  log::debug("make-model: wrote {} ({} parameters) to {}", opts.shape, c.num_parameters(), opts.out_dir.string());
  return Status::ok();
}

}  // namespace mpserve::model
