#include "backend/cpu/cpu_backend.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "backend/cpu/ops.h"
#include "backend/cpu/ops_detail.h"
#include "common/check.h"
#include "common/thread_pool.h"

namespace mpserve::backend::cpu {
namespace {

constexpr int64_t kDefaultKvCapBytes = int64_t{2} << 30;
// Sequences the default KV cache is sized for (each max_model_len long).
constexpr int64_t kDefaultKvSeqs = 16;

// An f32 buffer whose pages are only touched when used (no zero fill of a 2 GiB KV cache).
using Buffer = std::unique_ptr<float[]>;
Buffer make_buffer(int64_t n) { return Buffer(new float[static_cast<size_t>(std::max<int64_t>(n, 1))]); }

class CpuBackend final : public Backend {
 public:
  CpuBackend(const model::ModelWeights& w, const BackendOptions& opts, int32_t num_blocks)
      : w_(w), c_(w.config), opts_(opts), pool_(opts.num_threads), num_blocks_(num_blocks) {
    inv_freq_ = model::rope_inv_freq(c_);
    const int64_t t = opts_.max_num_batched_tokens;
    const int64_t kv_layer = int64_t{num_blocks_} * opts_.block_size * c_.kv_dim();
    for (int64_t l = 0; l < c_.num_layers; ++l) {
      k_cache_.push_back(make_buffer(kv_layer));
      v_cache_.push_back(make_buffer(kv_layer));
    }
    x_ = make_buffer(t * c_.hidden_size);
    h_ = make_buffer(t * c_.hidden_size);
    q_ = make_buffer(t * c_.q_dim());
    k_ = make_buffer(t * c_.kv_dim());
    v_ = make_buffer(t * c_.kv_dim());
    attn_ = make_buffer(t * c_.q_dim());
    gate_up_ = make_buffer(t * 2 * c_.intermediate_size);
    act_ = make_buffer(t * c_.intermediate_size);
    tokens_.reserve(static_cast<size_t>(t));
    positions_.reserve(static_cast<size_t>(t));
    entry_of_.reserve(static_cast<size_t>(t));
  }

  std::string_view name() const override { return "cpu"; }
  const model::ModelConfig& config() const override { return c_; }
  int32_t num_kv_blocks() const override { return num_blocks_; }
  int32_t block_size() const override { return opts_.block_size; }

  void step(const Batch& batch, bool want_logits, StepOutput* out) override;

 private:
  KvLayerView kv_view(int64_t layer) const {
    return KvLayerView{k_cache_[static_cast<size_t>(layer)].get(), v_cache_[static_cast<size_t>(layer)].get(),
                       opts_.block_size, c_.num_kv_heads, c_.head_dim};
  }
  void attention_block(const Batch& batch, int64_t layer, int64_t t);
  void mlp_block(int64_t layer, int64_t t);

  const model::ModelWeights& w_;
  const model::ModelConfig& c_;
  BackendOptions opts_;
  ThreadPool pool_;
  int32_t num_blocks_;
  std::vector<float> inv_freq_;  // (head_dim / 2)
  // Per layer, K and V: (num_blocks, block_size, n_kv_heads, head_dim).
  std::vector<Buffer> k_cache_, v_cache_;
  // Activations for up to max_num_batched_tokens (T) tokens.
  Buffer x_;        // (T, H) residual stream
  Buffer h_;        // (T, H) normed input of a block, then its output
  Buffer q_;        // (T, Q)
  Buffer k_, v_;    // (T, K)
  Buffer attn_;     // (T, Q)
  Buffer gate_up_;  // (T, 2I) [gate | up] per row
  Buffer act_;      // (T, I)
  std::vector<int32_t> tokens_;     // (T) this step's tokens, entry after entry
  std::vector<int32_t> positions_;  // (T)
  std::vector<int32_t> entry_of_;   // (T) index of the batch entry each token belongs to
  std::vector<float> final_h_;      // (S, H) hidden states of the sampled positions
  std::vector<float> logits_;       // (S, V)
};

void CpuBackend::attention_block(const Batch& batch, int64_t layer, int64_t t) {
  const model::LayerWeights& lw = w_.layers[static_cast<size_t>(layer)];
  const float eps = static_cast<float>(c_.rms_norm_eps);
  const int64_t hd = c_.head_dim, nh = c_.num_heads, nkv = c_.num_kv_heads;
  rms_norm(x_.get(), lw.input_norm, h_.get(), t, c_.hidden_size, eps);
  linear(h_.get(), lw.q_proj, lw.q_bias, q_.get(), t, pool_);
  linear(h_.get(), lw.k_proj, lw.k_bias, k_.get(), t, pool_);
  linear(h_.get(), lw.v_proj, lw.v_bias, v_.get(), t, pool_);
  if (!lw.q_norm.empty()) rms_norm(q_.get(), lw.q_norm, q_.get(), t * nh, hd, eps);
  if (!lw.k_norm.empty()) rms_norm(k_.get(), lw.k_norm, k_.get(), t * nkv, hd, eps);
  rope(q_.get(), positions_.data(), t, nh, hd, inv_freq_);
  rope(k_.get(), positions_.data(), t, nkv, hd, inv_freq_);

  const KvLayerView kv = kv_view(layer);
  int64_t offset = 0;
  for (const BatchEntry& e : batch.entries) {
    const int64_t n = static_cast<int64_t>(e.tokens.size());
    kv_write(kv, e.block_table, e.context_len, n, k_.get() + offset * c_.kv_dim(), v_.get() + offset * c_.kv_dim());
    offset += n;
  }
  // note: one parallel loop over every (token, head) of the batch, not one per sequence, so a
  // decode batch of many one-token sequences still spreads over all threads.
  const int64_t group = nh / nkv;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  pool_.parallel_for(t * nh, [&](int64_t begin, int64_t end) {
    thread_local std::vector<float> scratch;
    for (int64_t i = begin; i < end; ++i) {
      const int64_t r = i / nh, h = i % nh;
      const BatchEntry& e = batch.entries[static_cast<size_t>(entry_of_[static_cast<size_t>(r)])];
      const int64_t kv_len = positions_[static_cast<size_t>(r)] + 1;
      if (static_cast<int64_t>(scratch.size()) < kv_len) scratch.resize(static_cast<size_t>(kv_len));
      attention_head(q_.get() + (r * nh + h) * hd, kv, e.block_table, kv_len, h / group, scale,
                     attn_.get() + (r * nh + h) * hd, scratch.data());
    }
  });
  linear(attn_.get(), lw.o_proj, model::TensorView{}, h_.get(), t, pool_);
  float* x = x_.get();
  const float* o = h_.get();
  for (int64_t i = 0; i < t * c_.hidden_size; ++i) x[i] += o[i];
}

void CpuBackend::mlp_block(int64_t layer, int64_t t) {
  const model::LayerWeights& lw = w_.layers[static_cast<size_t>(layer)];
  const int64_t inter = c_.intermediate_size;
  rms_norm(x_.get(), lw.post_attn_norm, h_.get(), t, c_.hidden_size, static_cast<float>(c_.rms_norm_eps));
  linear_strided(h_.get(), lw.gate_proj, model::TensorView{}, gate_up_.get(), 2 * inter, t, pool_);
  linear_strided(h_.get(), lw.up_proj, model::TensorView{}, gate_up_.get() + inter, 2 * inter, t, pool_);
  silu_mul(gate_up_.get(), act_.get(), t, inter);
  linear(act_.get(), lw.down_proj, model::TensorView{}, h_.get(), t, pool_);
  float* x = x_.get();
  const float* o = h_.get();
  for (int64_t i = 0; i < t * c_.hidden_size; ++i) x[i] += o[i];
}

void CpuBackend::step(const Batch& batch, bool want_logits, StepOutput* out) {
  MPS_CHECK(out != nullptr);
  out->tokens.clear();
  out->logits.clear();
  const int64_t t = batch.num_tokens();
  MPS_CHECK_MSG(t <= opts_.max_num_batched_tokens, "batch of {} tokens exceeds max_num_batched_tokens {}", t,
                opts_.max_num_batched_tokens);
  tokens_.clear();
  positions_.clear();
  entry_of_.clear();
  for (const BatchEntry& e : batch.entries) {
    MPS_CHECK_MSG(!e.tokens.empty() || !e.sample, "sequence {} samples without new tokens", e.seq_id);
    MPS_CHECK_MSG(e.context_len + static_cast<int64_t>(e.tokens.size()) <=
                      static_cast<int64_t>(e.block_table.size()) * opts_.block_size,
                  "sequence {}: {} tokens do not fit its {} blocks", e.seq_id,
                  e.context_len + static_cast<int64_t>(e.tokens.size()), e.block_table.size());
    for (int32_t b : e.block_table) MPS_CHECK_MSG(b >= 0 && b < num_blocks_, "KV block id {} out of range", b);
    for (size_t i = 0; i < e.tokens.size(); ++i) {
      tokens_.push_back(e.tokens[i]);
      positions_.push_back(e.context_len + static_cast<int32_t>(i));
      entry_of_.push_back(static_cast<int32_t>(&e - batch.entries.data()));
    }
  }
  if (t == 0) return;

  embed(w_.embed_tokens, tokens_.data(), t, x_.get());
  for (int64_t l = 0; l < c_.num_layers; ++l) {
    if (opts_.ablation != Ablation::kNoAttention) attention_block(batch, l, t);
    if (opts_.ablation != Ablation::kNoMlp) mlp_block(l, t);
  }

  // Final norm and lm_head only for the positions that sample.
  const int64_t hidden = c_.hidden_size, vocab = c_.vocab_size;
  std::vector<int64_t> rows;
  int64_t offset = 0;
  for (const BatchEntry& e : batch.entries) {
    offset += static_cast<int64_t>(e.tokens.size());
    if (e.sample) rows.push_back(offset - 1);
  }
  const int64_t s = static_cast<int64_t>(rows.size());
  if (s == 0) return;
  final_h_.resize(static_cast<size_t>(s * hidden));
  for (int64_t i = 0; i < s; ++i) {
    std::copy_n(x_.get() + rows[static_cast<size_t>(i)] * hidden, hidden, final_h_.data() + i * hidden);
  }
  rms_norm(final_h_.data(), w_.final_norm, final_h_.data(), s, hidden, static_cast<float>(c_.rms_norm_eps));
  logits_.resize(static_cast<size_t>(s * vocab));
  linear(final_h_.data(), w_.lm_head, model::TensorView{}, logits_.data(), s, pool_);

  int64_t i = 0;
  for (const BatchEntry& e : batch.entries) {
    if (!e.sample) continue;
    std::span<const float> row(logits_.data() + i * vocab, static_cast<size_t>(vocab));
    out->tokens.push_back(sample_token(row, e.sampling, static_cast<uint64_t>(e.num_generated)));
    ++i;
  }
  if (want_logits) out->logits.assign(logits_.begin(), logits_.end());
}

// Checks one weight's shape against the config (ModelWeights is validated by load_model, but
// weights built elsewhere, e.g. in tests, come here too).
Status check_shape(const model::TensorView& t, std::vector<int64_t> expected, const char* what) {
  if (t.empty()) return Status::errorf("{} is missing", what);
  if (t.shape != expected) {
    return Status::errorf("{} ({}) has shape {}, expected [{}]", what, t.name, t.shape_string(),
                          fmt::join(expected, ", "));
  }
  return Status::ok();
}

Status validate(const model::ModelWeights& w) {
  const model::ModelConfig& c = w.config;
  if (c.hidden_size <= 0 || c.num_layers <= 0 || c.num_heads <= 0 || c.num_kv_heads <= 0 || c.head_dim <= 0 ||
      c.vocab_size <= 0 || c.intermediate_size <= 0) {
    return Status::error("model config has a non-positive dimension");
  }
  if (c.num_heads % c.num_kv_heads != 0) {
    return Status::errorf("num_heads {} is not a multiple of num_kv_heads {}", c.num_heads, c.num_kv_heads);
  }
  if (c.head_dim % 2 != 0) return Status::errorf("head_dim {} is odd (RoPE needs pairs)", c.head_dim);
  if (static_cast<int64_t>(w.layers.size()) != c.num_layers) {
    return Status::errorf("{} layers of weights for num_layers {}", w.layers.size(), c.num_layers);
  }
  const int64_t h = c.hidden_size, q = c.q_dim(), k = c.kv_dim(), i = c.intermediate_size;
  MPS_RETURN_IF_ERROR(check_shape(w.embed_tokens, {c.vocab_size, h}, "embed_tokens"));
  MPS_RETURN_IF_ERROR(check_shape(w.final_norm, {h}, "final_norm"));
  MPS_RETURN_IF_ERROR(check_shape(w.lm_head, {c.vocab_size, h}, "lm_head"));
  for (const model::LayerWeights& l : w.layers) {
    MPS_RETURN_IF_ERROR(check_shape(l.input_norm, {h}, "input_norm"));
    MPS_RETURN_IF_ERROR(check_shape(l.q_proj, {q, h}, "q_proj"));
    MPS_RETURN_IF_ERROR(check_shape(l.k_proj, {k, h}, "k_proj"));
    MPS_RETURN_IF_ERROR(check_shape(l.v_proj, {k, h}, "v_proj"));
    if (!l.q_bias.empty()) MPS_RETURN_IF_ERROR(check_shape(l.q_bias, {q}, "q_bias"));
    if (!l.k_bias.empty()) MPS_RETURN_IF_ERROR(check_shape(l.k_bias, {k}, "k_bias"));
    if (!l.v_bias.empty()) MPS_RETURN_IF_ERROR(check_shape(l.v_bias, {k}, "v_bias"));
    if (!l.q_norm.empty()) MPS_RETURN_IF_ERROR(check_shape(l.q_norm, {c.head_dim}, "q_norm"));
    if (!l.k_norm.empty()) MPS_RETURN_IF_ERROR(check_shape(l.k_norm, {c.head_dim}, "k_norm"));
    MPS_RETURN_IF_ERROR(check_shape(l.o_proj, {h, q}, "o_proj"));
    MPS_RETURN_IF_ERROR(check_shape(l.post_attn_norm, {h}, "post_attn_norm"));
    MPS_RETURN_IF_ERROR(check_shape(l.gate_proj, {i, h}, "gate_proj"));
    MPS_RETURN_IF_ERROR(check_shape(l.up_proj, {i, h}, "up_proj"));
    MPS_RETURN_IF_ERROR(check_shape(l.down_proj, {h, i}, "down_proj"));
  }
  return Status::ok();
}

}  // namespace

Result<std::unique_ptr<Backend>> make_cpu_backend(const model::ModelWeights& weights, const BackendOptions& opts) {
  MPS_RETURN_IF_ERROR(validate(weights).with_context("cpu backend"));
  if (opts.block_size <= 0 || opts.max_num_batched_tokens <= 0 || opts.max_model_len <= 0 || opts.max_num_seqs <= 0) {
    return Status::error("cpu backend: block_size, max_num_seqs, max_num_batched_tokens and max_model_len must be > 0");
  }
  const model::ModelConfig& c = weights.config;
  // K and V of every layer, f32.
  const int64_t bytes_per_block = 2 * c.num_layers * opts.block_size * c.kv_dim() * static_cast<int64_t>(sizeof(float));
  const int64_t min_blocks = (opts.max_model_len + opts.block_size - 1) / opts.block_size;
  int64_t num_blocks;
  if (opts.cpu_kv_cache_bytes > 0) {
    num_blocks = opts.cpu_kv_cache_bytes / bytes_per_block;
    if (num_blocks < min_blocks) {
      return Status::errorf(
          "cpu backend: cpu_kv_cache_bytes {} holds {} blocks of {} tokens, fewer than one max_model_len ({}) "
          "sequence needs ({} blocks of {} bytes)",
          opts.cpu_kv_cache_bytes, num_blocks, opts.block_size, opts.max_model_len, min_blocks, bytes_per_block);
    }
  } else {
    const int64_t seqs = std::min<int64_t>(opts.max_num_seqs, kDefaultKvSeqs);
    num_blocks = std::min(seqs * min_blocks, kDefaultKvCapBytes / bytes_per_block);
    num_blocks = std::max(num_blocks, min_blocks);
  }
  if (num_blocks > INT32_MAX) num_blocks = INT32_MAX;
  return std::unique_ptr<Backend>(new CpuBackend(weights, opts, static_cast<int32_t>(num_blocks)));
}

}  // namespace mpserve::backend::cpu
