// The CUDA backend's asynchronous launch()/collect() (--async-scheduling): the same tokens and
// logits as step(), batch spans free for reuse once launch() returns, a step launched before the
// one in flight is collected taking that step's sampled tokens on the device, and launch()
// returning before the device has finished (timed; printed, checked loosely).
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>

#include "backend/backend.h"
#include "backend/cuda/kernel_test_api.h"
#include "cuda/cuda_test_util.h"
#include "cuda/tiny_model.h"

namespace mpserve {
namespace {

using backend::Batch;
using backend::BatchEntry;
using backend::StepOutput;
using cuda_test::Seq;
using Clock = std::chrono::steady_clock;

backend::BackendOptions options(int max_tokens, int max_model_len) {
  backend::BackendOptions o;
  o.device = backend::Device::kCuda;
  o.block_size = 16;
  o.max_num_seqs = 8;
  o.max_num_batched_tokens = max_tokens;
  o.max_model_len = max_model_len;
  o.gpu_memory_fraction = 0.1;
  return o;
}

// Four sequences of random prompts, sequence i of first_len + i * len_step tokens, each with its
// own 32 KV blocks (512 tokens).
std::vector<Seq> random_seqs(uint32_t seed, int first_len, int len_step) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> tok(0, 151642);
  std::vector<Seq> seqs(4);
  for (size_t i = 0; i < seqs.size(); ++i) {
    for (int j = 0; j < first_len + len_step * int(i); ++j) seqs[i].tokens.push_back(tok(rng));
    for (int b = 0; b < 32; ++b) seqs[i].table.push_back(int32_t(i) * 32 + b);
  }
  return seqs;
}

class LaunchCollectTest : public cuda_test::TinyModelGpuTest {
 protected:
  std::unique_ptr<backend::Backend> make(const backend::BackendOptions& o) {
    auto r = backend::make_backend(*w_, o);
    EXPECT_TRUE(r.is_ok()) << r.error();
    return r.is_ok() ? std::move(r).value() : nullptr;
  }
};

// A prefill of 3 prompts, then 20 decode steps (graphs; one sequence samples at temperature 0.8,
// and a fourth joins at step 10, so two decode buckets and a mixed step run). One backend uses
// step(), the other launch() + collect() and overwrites the batch's token and block-table
// memory right after launch(): tokens and logits must be bit-identical.
TEST_F(LaunchCollectTest, launch_collect_gives_the_tokens_and_logits_of_step) {
  auto ref = make(options(256, 512));
  auto async = make(options(256, 512));
  ASSERT_TRUE(ref && async);
  EXPECT_TRUE(async->launch_is_async());
  std::vector<Seq> seqs = random_seqs(5, 9, 13);
  for (int step = 0; step < 21; ++step) {
    const size_t n_seqs = step < 10 ? 3 : 4;
    // Copies the step owns, so the async run can scribble over them after launch().
    std::vector<std::vector<int32_t>> toks(n_seqs), tables(n_seqs);
    Batch b;
    for (size_t i = 0; i < n_seqs; ++i) {
      const Seq& s = seqs[i];
      toks[i].assign(s.tokens.begin() + s.cached, s.tokens.end());
      tables[i] = s.table;
      BatchEntry e;
      e.seq_id = int64_t(i);
      e.context_len = s.cached;
      e.tokens = toks[i];
      e.block_table = tables[i];
      e.sample = true;
      e.sampling = i == 1 ? backend::SamplingParams{0.8f, 0.95f, 0, 42} : backend::SamplingParams{0.f, 1.f, 0, 0};
      e.num_generated = int32_t(s.tokens.size());
      b.entries.push_back(e);
    }
    StepOutput o_ref, o_async;
    ref->step(b, true, &o_ref);
    async->launch(b, true);
    for (size_t i = 0; i < n_seqs; ++i) {
      std::fill(toks[i].begin(), toks[i].end(), -7);
      std::fill(tables[i].begin(), tables[i].end(), -7);
    }
    async->collect(&o_async);
    ASSERT_EQ(o_ref.tokens, o_async.tokens) << "step " << step;
    ASSERT_TRUE(o_ref.logits == o_async.logits) << "step " << step;
    for (size_t i = 0; i < n_seqs; ++i) {
      seqs[i].cached = int32_t(seqs[i].tokens.size());
      seqs[i].tokens.push_back(o_ref.tokens[i]);
    }
  }
  // An empty batch launches nothing and collects no tokens.
  StepOutput o;
  async->launch(Batch{}, false);
  async->collect(&o);
  EXPECT_TRUE(o.tokens.empty());
}

// Two steps in flight: every step is launched before the one before it is collected, and its
// decode inputs are that step's sampled tokens (BatchEntry::prev_sample_row, a placeholder on
// the host). The rows move between steps (the order reverses every step), one sequence samples
// at temperature 0.8, and a fourth joins at step 10 with its prompt (a mixed, eager step; the
// others are graph replays). The tokens must be those of step() fed the real tokens.
TEST_F(LaunchCollectTest, launch_ahead_takes_the_tokens_of_the_step_in_flight) {
  auto ref = make(options(256, 512));
  auto ahead = make(options(256, 512));
  ASSERT_TRUE(ref && ahead);
  EXPECT_EQ(ahead->max_steps_in_flight(), 2);
  std::vector<Seq> seqs = random_seqs(7, 5, 11);
  const std::vector<int32_t> placeholder = {-1};
  std::vector<size_t> prev_order;  // the sequences of the previous step's sampled rows, in row order
  std::vector<std::vector<int32_t>> ref_tokens, ahead_tokens;
  int gathered = 0;
  for (int step = 0; step < 21; ++step) {
    std::vector<size_t> order = {0, 1, 2};
    if (step >= 10) order.push_back(3);
    if (step % 2 == 1) std::reverse(order.begin(), order.end());
    std::vector<std::vector<int32_t>> toks(4);
    Batch b_ref, b_ahead;
    for (size_t i : order) {
      const Seq& s = seqs[i];
      toks[i].assign(s.tokens.begin() + s.cached, s.tokens.end());
      BatchEntry e;
      e.seq_id = int64_t(i);
      e.context_len = s.cached;
      e.tokens = toks[i];
      e.block_table = s.table;
      e.sample = true;
      e.sampling = i == 1 ? backend::SamplingParams{0.8f, 0.95f, 0, 42} : backend::SamplingParams{0.f, 1.f, 0, 0};
      e.num_generated = int32_t(s.tokens.size());
      b_ref.entries.push_back(e);
      const auto it = std::find(prev_order.begin(), prev_order.end(), i);
      if (it != prev_order.end()) {
        e.tokens = placeholder;
        e.prev_sample_row = int32_t(it - prev_order.begin());
        ++gathered;
      }
      b_ahead.entries.push_back(e);
    }
    StepOutput o_ref;
    ref->step(b_ref, false, &o_ref);
    ahead->launch(b_ahead, false);  // beside the previous step, still in flight
    if (step > 0) {
      StepOutput o;
      ahead->collect(&o);
      ahead_tokens.push_back(o.tokens);
    }
    ref_tokens.push_back(o_ref.tokens);
    prev_order = order;
    for (size_t k = 0; k < order.size(); ++k) {
      Seq& s = seqs[order[k]];
      s.cached = int32_t(s.tokens.size());
      s.tokens.push_back(o_ref.tokens[k]);
    }
  }
  StepOutput last;
  ahead->collect(&last);
  ahead_tokens.push_back(last.tokens);
  EXPECT_GT(gathered, 50);
  ASSERT_EQ(ahead_tokens.size(), ref_tokens.size());
  for (size_t k = 0; k < ref_tokens.size(); ++k) EXPECT_EQ(ahead_tokens[k], ref_tokens[k]) << "step " << k;
}

// A 2048-token prefill and a batch-8 decode step (graph): launch() should return well before
// the step is done; collect() then blocks for the rest. Host timings vary on shared machines, so
// the check is loose (launch under the whole step) and the ratio is printed.
TEST_F(LaunchCollectTest, launch_returns_before_the_device_finishes) {
  auto be = make(options(2048, 2304));
  ASSERT_TRUE(be);
  std::vector<int32_t> prompt(2048);
  for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = int32_t((i * 7919) % 151000);
  std::vector<std::vector<int32_t>> tables(8);
  for (int s = 0; s < 8; ++s)
    for (int b = 0; b < 2304 / 16; ++b) tables[size_t(s)].push_back(s * 144 + b);
  auto time_step = [&](const Batch& b, const char* what) {
    double launch_us = 0, total_us = 0;
    for (int it = 0; it < 5; ++it) {  // the first runs load modules and capture graphs
      const auto t0 = Clock::now();
      be->launch(b, false);
      const auto t1 = Clock::now();
      StepOutput o;
      be->collect(&o);
      const auto t2 = Clock::now();
      launch_us = std::chrono::duration<double, std::micro>(t1 - t0).count();
      total_us = std::chrono::duration<double, std::micro>(t2 - t0).count();
    }
    const backend::StepTimings tm = be->last_step_timings();
    std::printf("LAUNCH %s: launch() %.1f us, launch+collect %.1f us (%.1f%%); timings host_us=%.1f wait_us=%.1f\n",
                what, launch_us, total_us, 100.0 * launch_us / total_us, tm.host_us, tm.wait_us);
    EXPECT_LT(launch_us, total_us) << what;
    EXPECT_TRUE(tm.valid);
    EXPECT_GT(tm.wait_us, 0.0) << what << ": collect() did not wait, so launch() ran the whole step";
  };
  Batch prefill;
  BatchEntry e;
  e.tokens = prompt;
  e.block_table = tables[0];
  e.sample = true;
  e.sampling.temperature = 0.f;
  prefill.entries.push_back(e);
  time_step(prefill, "prefill 2048 tokens");
  Batch decode;
  for (int s = 0; s < 8; ++s) {
    BatchEntry d;
    d.seq_id = s;
    d.context_len = 2000;
    d.tokens = std::span<const int32_t>(prompt.data() + s, 1);
    d.block_table = tables[size_t(s)];
    d.sample = true;
    d.sampling.temperature = 0.f;
    decode.entries.push_back(d);
  }
  time_step(decode, "decode batch 8, ctx 2000 (graph)");
}

}  // namespace
}  // namespace mpserve
