// Small random models held in memory (no files) and an independent dense f64 forward pass
// (whole sequence, no KV cache) to check the CPU backend against.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <numbers>
#include <random>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "common/half.h"
#include "model/weights.h"

namespace mpserve::backend::testing {

// ||a - b|| / ||b||
inline double normalized_error(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  if (a.size() != b.size()) return INFINITY;
  return den == 0 ? std::sqrt(num) : std::sqrt(num / den);
}

// Owns tensor bytes and hands out TensorViews into them.
class TensorArena {
 public:
  // A tensor of `shape` filled by gen(), stored as `dtype` (values rounded to it).
  template <typename Gen>
  model::TensorView make(const std::string& name, model::DType dtype, std::vector<int64_t> shape, Gen&& gen) {
    model::TensorView t;
    t.name = name;
    t.dtype = dtype;
    t.shape = std::move(shape);
    const int64_t n = t.numel();
    auto bytes = std::make_unique<std::vector<uint8_t>>(static_cast<size_t>(n) * model::dtype_size(dtype));
    for (int64_t i = 0; i < n; ++i) {
      const float v = gen();
      if (dtype == model::DType::kF32) {
        std::memcpy(bytes->data() + i * 4, &v, 4);
      } else {
        const uint16_t h = dtype == model::DType::kBF16 ? f32_to_bf16(v) : f32_to_f16(v);
        std::memcpy(bytes->data() + i * 2, &h, 2);
      }
    }
    t.data = bytes->data();
    t.nbytes = bytes->size();
    buffers_.push_back(std::move(bytes));
    return t;
  }

 private:
  std::vector<std::unique_ptr<std::vector<uint8_t>>> buffers_;
};

// A model in memory. Must not move after weights are made (views point into arena).
struct TestModel {
  model::ModelWeights weights;
  TensorArena arena;
};

struct TestModelSpec {
  model::Arch arch = model::Arch::kQwen2;
  model::DType dtype = model::DType::kF32;       // projections
  model::DType norm_dtype = model::DType::kF32;  // norms and biases
  model::DType embed_dtype = model::DType::kF32;
  bool tied = false;
  int64_t vocab = 67;
  int64_t hidden = 40;
  int64_t inter = 52;
  int64_t layers = 2;
  int64_t heads = 4;
  int64_t kv_heads = 2;
  int64_t head_dim = 16;
  uint32_t seed = 1;
};

inline model::ModelConfig make_config(const TestModelSpec& s) {
  model::ModelConfig c;
  c.arch = s.arch;
  c.vocab_size = s.vocab;
  c.hidden_size = s.hidden;
  c.intermediate_size = s.inter;
  c.num_layers = s.layers;
  c.num_heads = s.heads;
  c.num_kv_heads = s.kv_heads;
  c.head_dim = s.head_dim;
  c.max_position_embeddings = 4096;
  c.rms_norm_eps = 1e-6;
  c.tie_word_embeddings = s.tied;
  c.torch_dtype = s.dtype;
  c.attention_bias = s.arch == model::Arch::kQwen2;
  c.qk_norm = s.arch == model::Arch::kQwen3;
  if (s.arch == model::Arch::kQwen2) c.rope_theta = 1000000.0;
  if (s.arch == model::Arch::kLlama) {
    c.rope_theta = 500000.0;
    // Small original context so the test head_dim has low, medium and high frequencies.
    c.rope_scaling.enabled = true;
    c.rope_scaling.factor = 8.0;
    c.rope_scaling.low_freq_factor = 1.0;
    c.rope_scaling.high_freq_factor = 4.0;
    c.rope_scaling.original_max_position_embeddings = 64;
  }
  return c;
}

inline std::unique_ptr<TestModel> make_test_model(const TestModelSpec& s) {
  auto m = std::make_unique<TestModel>();
  model::ModelConfig c = make_config(s);
  m->weights.config = c;
  std::mt19937 rng(s.seed);
  auto uniform = [&rng](float a) {
    return [&rng, a] { return std::uniform_real_distribution<float>(-a, a)(rng); };
  };
  auto around_one = [&rng] { return 1.0f + std::uniform_real_distribution<float>(-0.2f, 0.2f)(rng); };
  auto proj = [&](const std::string& name, int64_t out, int64_t in) {
    return m->arena.make(name, s.dtype, {out, in}, uniform(1.5f / std::sqrt(float(in))));
  };
  const int64_t h = c.hidden_size, q = c.q_dim(), k = c.kv_dim(), i = c.intermediate_size;
  m->weights.embed_tokens = m->arena.make("model.embed_tokens.weight", s.embed_dtype, {c.vocab_size, h}, uniform(1.0f));
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    model::LayerWeights lw;
    lw.input_norm = m->arena.make(p + "input_layernorm.weight", s.norm_dtype, {h}, around_one);
    lw.q_proj = proj(p + "self_attn.q_proj.weight", q, h);
    lw.k_proj = proj(p + "self_attn.k_proj.weight", k, h);
    lw.v_proj = proj(p + "self_attn.v_proj.weight", k, h);
    if (c.attention_bias) {
      lw.q_bias = m->arena.make(p + "self_attn.q_proj.bias", s.norm_dtype, {q}, uniform(0.5f));
      lw.k_bias = m->arena.make(p + "self_attn.k_proj.bias", s.norm_dtype, {k}, uniform(0.5f));
      lw.v_bias = m->arena.make(p + "self_attn.v_proj.bias", s.norm_dtype, {k}, uniform(0.5f));
    }
    if (c.qk_norm) {
      lw.q_norm = m->arena.make(p + "self_attn.q_norm.weight", s.norm_dtype, {c.head_dim}, around_one);
      lw.k_norm = m->arena.make(p + "self_attn.k_norm.weight", s.norm_dtype, {c.head_dim}, around_one);
    }
    lw.o_proj = proj(p + "self_attn.o_proj.weight", h, q);
    lw.post_attn_norm = m->arena.make(p + "post_attention_layernorm.weight", s.norm_dtype, {h}, around_one);
    lw.gate_proj = proj(p + "mlp.gate_proj.weight", i, h);
    lw.up_proj = proj(p + "mlp.up_proj.weight", i, h);
    lw.down_proj = proj(p + "mlp.down_proj.weight", h, i);
    m->weights.layers.push_back(std::move(lw));
  }
  m->weights.final_norm = m->arena.make("model.norm.weight", s.norm_dtype, {h}, around_one);
  m->weights.lm_head = s.tied ? m->weights.embed_tokens : proj("lm_head.weight", c.vocab_size, h);
  return m;
}

// RoPE inverse frequencies computed here, in f64, from the transformers formulas (default and
// "llama3"), independently of model::rope_inv_freq.
inline std::vector<double> reference_inv_freq(const model::ModelConfig& c) {
  const int64_t d = c.head_dim;
  std::vector<double> f(static_cast<size_t>(d / 2));
  for (int64_t i = 0; i < d / 2; ++i) f[static_cast<size_t>(i)] = 1.0 / std::pow(c.rope_theta, double(2 * i) / double(d));
  if (!c.rope_scaling.enabled) return f;
  const auto& s = c.rope_scaling;
  const double old_len = double(s.original_max_position_embeddings);
  const double low_wavelen = old_len / s.low_freq_factor, high_wavelen = old_len / s.high_freq_factor;
  for (double& x : f) {
    const double wavelen = 2 * std::numbers::pi / x;
    if (wavelen > low_wavelen) {
      x = x / s.factor;
    } else if (wavelen >= high_wavelen) {
      const double smooth = (old_len / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
      x = (1 - smooth) * x / s.factor + smooth * x;
    }
  }
  return f;
}

// The dense forward pass in f64 over a whole sequence: logits (n, V) at every position.
inline std::vector<float> reference_forward(const model::ModelWeights& w, const std::vector<int32_t>& tokens,
                                            Ablation ablation = Ablation::kNone) {
  const model::ModelConfig& c = w.config;
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t h = c.hidden_size, hd = c.head_dim, nh = c.num_heads, nkv = c.num_kv_heads;
  const int64_t qd = c.q_dim(), kd = c.kv_dim(), inter = c.intermediate_size;
  using Vec = std::vector<double>;
  auto elem = [](const model::TensorView& t, int64_t i) -> double {
    if (t.dtype == model::DType::kF32) return static_cast<const float*>(t.data)[i];
    const uint16_t v = static_cast<const uint16_t*>(t.data)[i];
    return t.dtype == model::DType::kBF16 ? bf16_to_f32(v) : f16_to_f32(v);
  };
  auto matmul = [&](const Vec& x, const model::TensorView& wt, const model::TensorView* bias) {
    const int64_t out = wt.shape[0], in = wt.shape[1];
    Vec y(static_cast<size_t>(n * out));
    for (int64_t r = 0; r < n; ++r) {
      for (int64_t o = 0; o < out; ++o) {
        double s = bias && !bias->empty() ? elem(*bias, o) : 0.0;
        for (int64_t k = 0; k < in; ++k) s += x[static_cast<size_t>(r * in + k)] * elem(wt, o * in + k);
        y[static_cast<size_t>(r * out + o)] = s;
      }
    }
    return y;
  };
  auto norm = [&](Vec x, const model::TensorView& wt, int64_t dim) {
    for (size_t r = 0; r < x.size() / static_cast<size_t>(dim); ++r) {
      double ss = 0;
      for (int64_t i = 0; i < dim; ++i) ss += x[r * dim + i] * x[r * dim + i];
      const double inv = 1.0 / std::sqrt(ss / double(dim) + c.rms_norm_eps);
      for (int64_t i = 0; i < dim; ++i) x[r * dim + i] = x[r * dim + i] * inv * elem(wt, i);
    }
    return x;
  };
  const std::vector<double> inv_freq = reference_inv_freq(c);
  auto rotate = [&](Vec& x, int64_t heads) {
    for (int64_t t = 0; t < n; ++t) {
      for (int64_t hh = 0; hh < heads; ++hh) {
        double* v = &x[static_cast<size_t>((t * heads + hh) * hd)];
        for (int64_t i = 0; i < hd / 2; ++i) {
          const double a = double(t) * inv_freq[static_cast<size_t>(i)];
          const double x1 = v[i], x2 = v[i + hd / 2];
          v[i] = x1 * std::cos(a) - x2 * std::sin(a);
          v[i + hd / 2] = x2 * std::cos(a) + x1 * std::sin(a);
        }
      }
    }
  };

  Vec x(static_cast<size_t>(n * h));
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t i = 0; i < h; ++i) x[static_cast<size_t>(t * h + i)] = elem(w.embed_tokens, tokens[size_t(t)] * h + i);
  }
  for (const model::LayerWeights& lw : w.layers) {
    if (ablation != Ablation::kNoAttention) {
      const Vec xn = norm(x, lw.input_norm, h);
      Vec q = matmul(xn, lw.q_proj, &lw.q_bias), k = matmul(xn, lw.k_proj, &lw.k_bias),
          v = matmul(xn, lw.v_proj, &lw.v_bias);
      if (!lw.q_norm.empty()) q = norm(q, lw.q_norm, hd);
      if (!lw.k_norm.empty()) k = norm(k, lw.k_norm, hd);
      rotate(q, nh);
      rotate(k, nkv);
      Vec attn(static_cast<size_t>(n * qd), 0.0);
      for (int64_t t = 0; t < n; ++t) {
        for (int64_t hh = 0; hh < nh; ++hh) {
          const int64_t g = hh / (nh / nkv);
          Vec p(static_cast<size_t>(t + 1));
          double mx = -INFINITY;
          for (int64_t j = 0; j <= t; ++j) {
            double s = 0;
            for (int64_t i = 0; i < hd; ++i) s += q[size_t(t * qd + hh * hd + i)] * k[size_t(j * kd + g * hd + i)];
            p[size_t(j)] = s / std::sqrt(double(hd));
            mx = std::max(mx, p[size_t(j)]);
          }
          double sum = 0;
          for (double& e : p) sum += (e = std::exp(e - mx));
          for (int64_t j = 0; j <= t; ++j) {
            for (int64_t i = 0; i < hd; ++i) attn[size_t(t * qd + hh * hd + i)] += p[size_t(j)] / sum * v[size_t(j * kd + g * hd + i)];
          }
        }
      }
      const Vec o = matmul(attn, lw.o_proj, nullptr);
      for (size_t i = 0; i < x.size(); ++i) x[i] += o[i];
    }
    if (ablation != Ablation::kNoMlp) {
      const Vec xn = norm(x, lw.post_attn_norm, h);
      const Vec g = matmul(xn, lw.gate_proj, nullptr), u = matmul(xn, lw.up_proj, nullptr);
      Vec act(static_cast<size_t>(n * inter));
      for (size_t i = 0; i < act.size(); ++i) act[i] = g[i] / (1 + std::exp(-g[i])) * u[i];
      const Vec o = matmul(act, lw.down_proj, nullptr);
      for (size_t i = 0; i < x.size(); ++i) x[i] += o[i];
    }
  }
  const Vec logits = matmul(norm(x, w.final_norm, h), w.lm_head, nullptr);
  return std::vector<float>(logits.begin(), logits.end());
}

}  // namespace mpserve::backend::testing
