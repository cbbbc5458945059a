// Host cost of the engine's decode steps at large batches, measured without a device: the
// backend does no work (it returns a fixed or a random token per sampled row), so a step's time is the engine's own
// scheduling, batch building, post-processing and incremental detokenization with the real Qwen
// tokenizer. On the GPU that time sits between two device steps (bench offline's host_us), so it
// is what `host %` at batch 256 is made of. DISABLED_: run by hand, under perf for a profile:
//   build/test_engine --gtest_also_run_disabled_tests --gtest_filter='*EngineHostBench*'
// One parseable line per setting and batch: BENCH kernel=engine_host setting=... batch=... us_per_step=... (median of 5
// runs of 64 decode steps each, after the prefill steps).
// A profile of the measured decode steps alone (not the engine's construction and prefill): start
// perf disabled with control fifos and name them here; the bench enables it around each measured
// loop and waits for perf's ack, e.g.
//   mkfifo /tmp/ctl /tmp/ack
//   MPSERVE_PERF_CTL=/tmp/ctl MPSERVE_PERF_ACK=/tmp/ack perf record -D -1 --control=fifo:/tmp/ctl,/tmp/ack
//     build/test_engine --gtest_also_run_disabled_tests --gtest_filter='*EngineHostBench*'
// MPSERVE_HOST_BENCH_SETTING=the|random_h200_pool runs one setting only.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <string_view>
#include <vector>

#include "backend/backend.h"
#include "engine/engine.h"
#include "model/config.h"
#include "tokenizer/tokenizer.h"

namespace mpserve::engine {
namespace {

// Nothing is computed. Every sampled row gets `token` if it is >= 0, else a seeded random token
// from the vocabulary (what a random-weight model samples: many byte-level and CJK pieces).
class NullBackend : public backend::Backend {
 public:
  NullBackend(int32_t vocab, int32_t blocks, int32_t block_size, int32_t token)
      : blocks_(blocks), block_size_(block_size), token_(token), pick_(0, vocab - 1) {
    config_.vocab_size = vocab;
  }
  std::string_view name() const override { return "null"; }
  const model::ModelConfig& config() const override { return config_; }
  int32_t num_kv_blocks() const override { return blocks_; }
  int32_t block_size() const override { return block_size_; }
  void step(const backend::Batch& batch, bool /*want_logits*/, backend::StepOutput* out) override {
    out->tokens.clear();
    out->logits.clear();
    for (const backend::BatchEntry& e : batch.entries)
      if (e.sample) out->tokens.push_back(token_ >= 0 ? token_ : pick_(rng_));
  }

 private:
  model::ModelConfig config_;
  int32_t blocks_, block_size_, token_;
  std::mt19937 rng_{42};
  std::uniform_int_distribution<int32_t> pick_;
};

// Tells a perf started with --control fifos (see the top) to start or stop counting, and waits
// for its ack so that no sample of the other side lands in the profile. No-op without them.
void perf_control(const char* command) {
  const char* ctl = std::getenv("MPSERVE_PERF_CTL");
  const char* ack = std::getenv("MPSERVE_PERF_ACK");
  if (!ctl || !ack) return;
  std::FILE* c = std::fopen(ctl, "w");
  std::FILE* a = c ? std::fopen(ack, "r") : nullptr;
  ASSERT_TRUE(c && a) << "cannot open the perf control fifos " << ctl << ", " << ack;
  std::fputs(command, c);
  std::fclose(c);
  char reply[8] = {};
  ASSERT_EQ(std::fread(reply, 1, 5, a), 5u) << "no ack from perf";
  std::fclose(a);
}

TEST(EngineHostBench, DISABLED_decode_step_host_cost) {
  const char* dir = std::getenv("MPSERVE_TOKENIZER_DIR");
  if (!dir) GTEST_SKIP() << "MPSERVE_TOKENIZER_DIR not set";
  auto tok = tokenizer::Tokenizer::load(dir);
  ASSERT_TRUE(tok.is_ok()) << tok.status().message();
  const int32_t the = (*tok)->encode(" the").at(0);  // decodes to text every step
  constexpr int kPrompt = 128, kDecodeSteps = 64, kRuns = 5;
  // Two settings: the same ordinary token and a pool just big enough; and what a GPU run is like,
  // a random-weight model's random tokens and the pool the CUDA backend makes of an H200's memory
  // at 0.5B (676k blocks), whose free list and prefix-cache map are then spread over tens of MB.
  struct Setting {
    const char* name;
    int32_t token;       // -1: random tokens
    int32_t kv_blocks;   // 0: just enough for the batch
  };
  const char* only = std::getenv("MPSERVE_HOST_BENCH_SETTING");
  for (const Setting& set : {Setting{"the", the, 0}, Setting{"random_h200_pool", -1, 676254}})
  for (bool async : {false, true})
  for (int batch : {64, 256}) {
    if (only && std::string_view(only) != set.name) continue;
    std::vector<double> us;
    for (int run = 0; run < kRuns; ++run) {
      EngineOptions o;
      o.async_scheduling = async;
      o.backend.max_num_seqs = batch;
      o.backend.max_num_batched_tokens = 2048;
      o.backend.max_model_len = kPrompt + kDecodeSteps + 64;
      const int32_t blocks = set.kv_blocks > 0 ? set.kv_blocks : batch * ((o.backend.max_model_len + 15) / 16) + 16;
      Engine eng(o, std::make_unique<NullBackend>((*tok)->vocab_size(), blocks, 16, set.token), **tok);
      std::mt19937 rng(1234 + run);
      std::uniform_int_distribution<int32_t> id(1000, 20000);
      for (int b = 0; b < batch; ++b) {
        GenerationRequest r;
        r.prompt.resize(kPrompt);
        for (int32_t& t : r.prompt) t = id(rng);
        r.max_tokens = kDecodeSteps + 32;
        r.ignore_eos = true;
        r.sampling.temperature = 0.f;
        ASSERT_TRUE(eng.add_request(std::move(r)).is_ok());
      }
      // Prefill (chunked: 2048 tokens a step) and a few decode steps, so every sequence decodes.
      for (int s = 0; s < batch * kPrompt / 2048 + 4; ++s) eng.step();
      perf_control("enable\n");
      const auto t0 = std::chrono::steady_clock::now();
      size_t outs = 0;
      for (int s = 0; s < kDecodeSteps; ++s) outs += eng.step().size();
      const auto t1 = std::chrono::steady_clock::now();
      perf_control("disable\n");
      EXPECT_EQ(outs, size_t(batch) * kDecodeSteps);  // every sequence progressed every step
      us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count() / kDecodeSteps);
    }
    std::sort(us.begin(), us.end());
    std::printf("BENCH kernel=engine_host setting=%s async=%d batch=%d us_per_step=%.1f us_min=%.1f us_max=%.1f us_per_seq=%.3f\n",
                set.name, async ? 1 : 0, batch, us[us.size() / 2], us.front(), us.back(), us[us.size() / 2] / batch);
    std::fflush(stdout);
  }
}

}  // namespace
}  // namespace mpserve::engine
