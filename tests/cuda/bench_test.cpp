// Timing of the CUDA backend on a Qwen2.5-0.5B-shaped random model (DISABLED_: run on the GPU
// machine with --gtest_also_run_disabled_tests --gtest_filter='*Bench*'). One parseable line
// per configuration: BENCH kind=... ms=... tok_s=...
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>

#include "backend/backend.h"
#include "backend/cuda/kernel_test_api.h"
#include "common/half.h"

namespace mpserve {
namespace {

struct BigModel {
  model::ModelWeights w;
  std::vector<std::vector<uint16_t>> storage;
  uint64_t state = 88172645463325252ull;
  model::TensorView tensor(std::vector<int64_t> shape, float scale, float mean = 0.f) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    storage.emplace_back(size_t(n));
    for (auto& x : storage.back()) {  // xorshift: uniform in [mean - scale, mean + scale)
      state ^= state << 13, state ^= state >> 7, state ^= state << 17;
      x = f32_to_bf16(mean + scale * (float(state >> 40) * (2.0f / 16777216.0f) - 1.0f));
    }
    model::TensorView t;
    t.name = "random";
    t.dtype = model::DType::kBF16;
    t.shape = std::move(shape);
    t.data = storage.back().data();
    t.nbytes = size_t(n) * 2;
    return t;
  }
};

std::unique_ptr<BigModel> qwen25_05b() {
  auto m = std::make_unique<BigModel>();
  m->storage.reserve(512);
  model::ModelConfig& c = m->w.config;
  c.arch = model::Arch::kQwen2;
  c.vocab_size = 151936;
  c.hidden_size = 896;
  c.intermediate_size = 4864;
  c.num_layers = 24;
  c.num_heads = 14;
  c.num_kv_heads = 2;
  c.head_dim = 64;
  c.max_position_embeddings = 32768;
  c.rope_theta = 1000000.0;
  c.tie_word_embeddings = true;
  c.attention_bias = true;
  const int64_t h = 896, q = 896, k = 128, in = 4864;
  m->w.embed_tokens = m->tensor({c.vocab_size, h}, 0.05f);
  m->w.lm_head = m->w.embed_tokens;
  m->w.final_norm = m->tensor({h}, 0.1f, 1.0f);
  for (int l = 0; l < 24; ++l) {
    model::LayerWeights lw;
    lw.input_norm = m->tensor({h}, 0.1f, 1.0f);
    lw.q_proj = m->tensor({q, h}, 0.05f);
    lw.k_proj = m->tensor({k, h}, 0.05f);
    lw.v_proj = m->tensor({k, h}, 0.05f);
    lw.q_bias = m->tensor({q}, 0.1f);
    lw.k_bias = m->tensor({k}, 0.1f);
    lw.v_bias = m->tensor({k}, 0.1f);
    lw.o_proj = m->tensor({h, q}, 0.05f);
    lw.post_attn_norm = m->tensor({h}, 0.1f, 1.0f);
    lw.gate_proj = m->tensor({in, h}, 0.05f);
    lw.up_proj = m->tensor({in, h}, 0.05f);
    lw.down_proj = m->tensor({h, in}, 0.02f);
    m->w.layers.push_back(lw);
  }
  return m;
}

double median_ms(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

TEST(CudaBench, DISABLED_qwen25_05b_decode_and_prefill) {
  if (!backend::cuda::test_api::gpu_available()) GTEST_SKIP() << "no CUDA device";
  auto m = qwen25_05b();
  for (bool graphs : {false, true}) {
    backend::BackendOptions o;
    o.device = backend::Device::kCuda;
    o.max_num_seqs = 256;
    o.max_num_batched_tokens = 2048;
    o.max_model_len = 2048;
    o.gpu_memory_fraction = 0.5;
    o.cuda_graphs = graphs;
    auto r = backend::make_backend(m->w, o);
    ASSERT_TRUE(r.is_ok()) << r.error();
    auto& be = *r.value();
    const int blocks_per_seq = 2048 / 16;
    std::vector<std::vector<int32_t>> tables(256), toks(256, std::vector<int32_t>(2048, 17));
    for (int i = 0; i < 256; ++i)
      for (int b = 0; b < blocks_per_seq; ++b) tables[size_t(i)].push_back((i * blocks_per_seq + b) % be.num_kv_blocks());
    for (int ctx : {128, 1024}) {
      for (int bsz : {1, 8, 32, 128, 256}) {
        backend::Batch batch;
        for (int i = 0; i < bsz; ++i) {
          backend::BatchEntry e;
          e.seq_id = i;
          e.context_len = ctx;
          e.tokens = std::span<const int32_t>(toks[size_t(i)].data(), 1);
          e.block_table = tables[size_t(i)];
          e.sample = true;
          e.sampling.temperature = 0.f;
          batch.entries.push_back(e);
        }
        std::vector<double> ms;
        backend::StepOutput out;
        for (int it = 0; it < 23; ++it) {
          const auto t0 = std::chrono::steady_clock::now();
          be.step(batch, false, &out);
          const auto t1 = std::chrono::steady_clock::now();
          if (it >= 3) ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
        }
        const double med = median_ms(ms);
        std::printf("BENCH kind=decode model=qwen2.5-0.5b-shape graphs=%d ctx=%d batch=%d ms=%.3f tok_s=%.0f\n",
                    graphs ? 1 : 0, ctx, bsz, med, bsz / med * 1e3);
      }
    }
    for (int n : {512, 2048}) {
      backend::Batch batch;
      const int seqs = std::max(1, n / 1024);
      for (int i = 0; i < seqs; ++i) {
        backend::BatchEntry e;
        e.seq_id = i;
        e.context_len = 0;
        e.tokens = std::span<const int32_t>(toks[size_t(i)].data(), size_t(n / seqs));
        e.block_table = tables[size_t(i)];
        e.sample = true;
        batch.entries.push_back(e);
      }
      std::vector<double> ms;
      backend::StepOutput out;
      for (int it = 0; it < 8; ++it) {
        const auto t0 = std::chrono::steady_clock::now();
        be.step(batch, false, &out);
        const auto t1 = std::chrono::steady_clock::now();
        if (it >= 2) ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
      }
      const double med = median_ms(ms);
      std::printf("BENCH kind=prefill model=qwen2.5-0.5b-shape graphs=%d tokens=%d seqs=%d ms=%.3f tok_s=%.0f\n",
                  graphs ? 1 : 0, n, seqs, med, n / med * 1e3);
    }
  }
}

}  // namespace
}  // namespace mpserve
