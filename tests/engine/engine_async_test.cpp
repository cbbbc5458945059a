// Async scheduling (EngineOptions::async_scheduling): step t+1 is scheduled while step t is in
// flight, and nothing a client sees may differ from the synchronous engine.
#include <gtest/gtest.h>

#include <chrono>
#include <iostream>
#include <map>
#include <random>

#include "engine/engine.h"
#include "engine_fakes.h"

namespace mpserve::engine {
namespace {

using testing::FakeBackendOptions;
using testing::FakeEngine;
using testing::FakeTokenizer;
using testing::letters;
using testing::run_alone;

// Everything a client receives for one request.
struct Received {
  std::vector<int32_t> tokens;
  std::string text;
  std::vector<float> logits;
  FinishReason reason = FinishReason::kNone;
  int32_t prompt_tokens = 0;
  int32_t completion_tokens = 0;
  int outputs_after_finish = 0;
  bool finished = false;
};

void receive(std::map<uint64_t, Received>* got, const std::vector<RequestOutput>& outs) {
  for (const RequestOutput& o : outs) {
    Received& r = (*got)[o.request_id];
    if (r.finished) ++r.outputs_after_finish;
    r.tokens.insert(r.tokens.end(), o.new_tokens.begin(), o.new_tokens.end());
    r.text += o.new_text;
    r.logits.insert(r.logits.end(), o.logits.begin(), o.logits.end());
    r.reason = o.finish_reason;
    r.prompt_tokens = o.prompt_tokens;
    r.completion_tokens = o.completion_tokens;
    r.finished = o.finished;
  }
}

int64_t sampled_entries(const testing::FakeBackend& fake) {
  int64_t n = 0;
  for (const auto& s : fake.steps) {
    for (const auto& e : s.entries) n += e.sample ? 1 : 0;
  }
  return n;
}

GenerationRequest request(std::vector<int32_t> prompt, int32_t max_tokens) {
  GenerationRequest r;
  r.prompt = std::move(prompt);
  r.max_tokens = max_tokens;
  r.ignore_eos = true;
  return r;
}

struct WorkloadRun {
  std::vector<Received> per_request;  // in submission order
  EngineStats stats;
  int64_t sampled_entries = 0;
};

// in_flight: the backend's max_steps_in_flight (2: the engine launches t+1 before collecting t).
WorkloadRun run_workload(const std::vector<GenerationRequest>& reqs, bool async, bool chunked, int in_flight = 2) {
  EngineOptions opts;
  opts.async_scheduling = async;
  opts.enable_chunked_prefill = chunked;
  opts.backend.max_num_seqs = 6;
  opts.backend.max_num_batched_tokens = chunked ? 12 : 80;
  opts.backend.max_model_len = 128;
  FakeBackendOptions bo;
  bo.block_size = 4;
  bo.num_blocks = 20;
  bo.max_steps_in_flight = in_flight;
  FakeEngine fe(opts, bo);
  std::mt19937 rng(99);
  std::vector<uint64_t> ids;
  std::map<uint64_t, Received> got;
  size_t next = 0;
  for (int steps = 0; (next < reqs.size() || fe.engine->has_unfinished()) && steps < 20000; ++steps) {
    for (int k = rng() % 4; k > 0 && next < reqs.size(); --k, ++next) {
      auto id = fe.engine->add_request(reqs[next]);
      EXPECT_TRUE(id.is_ok()) << id.error();
      ids.push_back(*id);
    }
    receive(&got, fe.engine->step());
    fe.engine->check_invariants();
  }
  EXPECT_FALSE(fe.engine->has_unfinished());
  EXPECT_EQ(fe.fake->errors, 0);
  WorkloadRun run;
  for (uint64_t id : ids) run.per_request.push_back(got[id]);
  run.stats = fe.engine->stats();
  run.sampled_entries = sampled_entries(*fe.fake);
  return run;
}

// Async scheduling against sync on the same workload, with the backend taking step t's tokens on
// the device (two steps in flight: t+1 launched before t is collected) and without (one).
TEST(EngineAsync, async_outputs_equal_sync_for_every_request_and_field) {
  for (bool chunked : {true, false}) {
    for (bool stop_ids_and_logits : {true, false}) {
      // A workload that touches every feature: shared prefixes (prefix cache), long prompts
      // (chunked prefill), a KV cache too small for it (preemption), eos, stop strings, and with
      // stop_ids_and_logits stop ids and logits (a step wanting logits is never launched ahead).
      std::mt19937 rng(chunked ? 11 : 12);
      const std::vector<GenerationRequest> reqs = testing::random_requests(rng, 50, stop_ids_and_logits);
      const WorkloadRun sync = run_workload(reqs, /*async=*/false, chunked);
      EXPECT_EQ(sync.sampled_entries, sync.stats.generation_tokens_total);
      for (int in_flight : {1, 2}) {
        const WorkloadRun async = run_workload(reqs, /*async=*/true, chunked, in_flight);
        SCOPED_TRACE(::testing::Message() << (chunked ? "chunked" : "not chunked") << ", "
                                          << (stop_ids_and_logits ? "stop ids and logits" : "neither") << ", "
                                          << in_flight << " in flight");
        ASSERT_EQ(sync.per_request.size(), reqs.size());
        ASSERT_EQ(async.per_request.size(), reqs.size());
        for (size_t i = 0; i < reqs.size(); ++i) {
          const Received& s = sync.per_request[i];
          const Received& a = async.per_request[i];
          SCOPED_TRACE(::testing::Message() << "request " << i);
          ASSERT_TRUE(a.finished);
          EXPECT_EQ(a.tokens, s.tokens);
          EXPECT_EQ(a.text, s.text);
          EXPECT_EQ(a.logits, s.logits);
          EXPECT_EQ(a.reason, s.reason);
          EXPECT_EQ(a.prompt_tokens, s.prompt_tokens);
          EXPECT_EQ(a.completion_tokens, s.completion_tokens);
          EXPECT_EQ(a.outputs_after_finish, 0);
          if (reqs[i].want_logits) {
            EXPECT_EQ(a.logits.size(), a.tokens.size() * FakeTokenizer::kVocab);
          }
        }
        // The workload must have exercised what it is meant to.
        EXPECT_GT(async.stats.num_preemptions, 0);
        EXPECT_GT(async.stats.prefix_cache_hit_tokens, 0);
        EXPECT_EQ(async.stats.kv_blocks_used, 0);
        EXPECT_EQ(async.stats.generation_tokens_total, sync.stats.generation_tokens_total);
        if (in_flight == 1) {
          // No sequence ran a step past its end: a request that finished at step t (max_tokens,
          // eos, stop) was taken out of the optimistically scheduled step t+1 before its launch.
          EXPECT_EQ(async.stats.async_launched_ahead, 0);
          EXPECT_EQ(async.sampled_entries, async.stats.generation_tokens_total);
        } else {
          // Launched ahead, a sequence that t's token ends (eos, stop id or string; never
          // max_tokens, known at scheduling) runs one row of t+1 whose token is dropped.
          EXPECT_GT(async.stats.async_launched_ahead, async.stats.steps / 2);
          EXPECT_GE(async.sampled_entries, async.stats.generation_tokens_total);
          EXPECT_LE(async.sampled_entries - async.stats.generation_tokens_total, static_cast<int64_t>(reqs.size()));
        }
      }
    }
  }
}


TEST(EngineAsync, async_step_returns_the_previous_steps_outputs_and_stays_unfinished_in_flight) {
  EngineOptions opts;
  opts.async_scheduling = true;
  FakeEngine fe(opts, FakeBackendOptions{});
  ASSERT_TRUE(fe.engine->add_request(request(letters("abc"), 3)).is_ok());
  // First call: launches the prefill, nothing collected yet.
  EXPECT_TRUE(fe.engine->step().empty());
  EXPECT_EQ(fe.fake->steps.size(), 1u);
  EXPECT_TRUE(fe.engine->has_unfinished());
  fe.engine->check_invariants();
  std::vector<int32_t> tokens;
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(fe.engine->has_unfinished());
    auto outs = fe.engine->step();
    fe.engine->check_invariants();
    ASSERT_EQ(outs.size(), 1u);
    ASSERT_EQ(outs[0].new_tokens.size(), 1u);
    tokens.push_back(outs[0].new_tokens[0]);
    EXPECT_EQ(outs[0].finished, i == 2);
  }
  // The last token (max_tokens) was known to be the last before it was collected: no step ran
  // for it, and nothing is left in flight.
  EXPECT_EQ(fe.fake->steps.size(), 3u);
  EXPECT_FALSE(fe.engine->has_unfinished());
  EXPECT_EQ(tokens, run_alone(request(letters("abc"), 3)).tokens);
  EXPECT_EQ(fe.engine->stats().steps, 4);
}

TEST(EngineAsync, async_abort_while_in_flight_is_reported_once_and_frees_blocks_now) {
  EngineOptions opts;
  opts.async_scheduling = true;
  FakeEngine fe(opts, FakeBackendOptions{});
  const uint64_t a = *fe.engine->add_request(request(letters("abcdefghi"), 20));
  const uint64_t b = *fe.engine->add_request(request(letters("xyz"), 6));
  std::map<uint64_t, Received> got;
  receive(&got, fe.engine->step());  // launches the prefills
  receive(&got, fe.engine->step());  // collects them, launches the first decodes
  ASSERT_EQ(got[a].tokens.size(), 1u);
  const int32_t used_before = fe.engine->stats().kv_blocks_used;

  fe.engine->abort_request(a);  // a's decode is on the device now
  fe.engine->check_invariants();
  EXPECT_LT(fe.engine->stats().kv_blocks_used, used_before) << "blocks are freed at abort, not at collect";
  EXPECT_TRUE(fe.engine->has_unfinished());

  auto outs = fe.engine->step();
  fe.engine->check_invariants();
  receive(&got, outs);
  int a_outputs = 0;
  for (const auto& o : outs) {
    if (o.request_id != a) continue;
    ++a_outputs;
    EXPECT_TRUE(o.finished);
    EXPECT_EQ(o.finish_reason, FinishReason::kAborted);
    EXPECT_TRUE(o.new_tokens.empty()) << "the in-flight token of an aborted request is dropped";
    EXPECT_EQ(o.completion_tokens, 1) << "the placeholder is not counted";
  }
  EXPECT_EQ(a_outputs, 1);
  while (fe.engine->has_unfinished()) {
    receive(&got, fe.engine->step());
    fe.engine->check_invariants();
  }
  EXPECT_EQ(got[a].outputs_after_finish, 0);
  EXPECT_EQ(got[b].tokens, run_alone(request(letters("xyz"), 6)).tokens);
  EXPECT_EQ(fe.engine->stats().kv_blocks_used, 0);
  EXPECT_EQ(fe.fake->errors, 0);

  // Aborting everything in flight: the engine stays unfinished until that step is collected.
  const uint64_t c = *fe.engine->add_request(request(letters("abc"), 8));
  fe.engine->step();
  fe.engine->abort_request(c);
  EXPECT_TRUE(fe.engine->has_unfinished());
  outs = fe.engine->step();
  ASSERT_EQ(outs.size(), 1u);
  EXPECT_EQ(outs[0].finish_reason, FinishReason::kAborted);
  EXPECT_FALSE(fe.engine->has_unfinished());
  fe.engine->check_invariants();
}

TEST(EngineAsync, async_engine_destroyed_with_a_step_in_flight_collects_it) {
  EngineOptions opts;
  opts.async_scheduling = true;
  FakeEngine fe(opts, FakeBackendOptions{}, std::chrono::milliseconds(5));
  ASSERT_TRUE(fe.engine->add_request(request(letters("abc"), 8)).is_ok());
  fe.engine->step();
  fe.engine->step();
  fe.engine.reset();  // SlowDeviceFakeBackend fails the test when destroyed with a step in flight
}

// Study arm (b): with a device that runs on its own, the injected host cost hides behind it.
TEST(EngineAsync, async_scheduling_overlaps_host_cost_with_device_time) {
  constexpr int kTokens = 10;
  constexpr auto kDevice = std::chrono::milliseconds(20);
  auto run = [&](bool async, EngineStats* stats) {
    EngineOptions opts;
    opts.async_scheduling = async;
    opts.step_cpu_us = 20000;
    FakeEngine fe(opts, FakeBackendOptions{}, kDevice);
    EXPECT_TRUE(fe.fake->launch_is_async());
    const uint64_t id = *fe.engine->add_request(request(letters("abc"), kTokens));
    const auto t0 = std::chrono::steady_clock::now();
    std::map<uint64_t, Received> got;
    while (fe.engine->has_unfinished()) receive(&got, fe.engine->step());
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_EQ(got[id].tokens.size(), static_cast<size_t>(kTokens));
    EXPECT_EQ(fe.fake->steps.size(), static_cast<size_t>(kTokens));
    EXPECT_EQ(fe.fake->errors, 0);
    *stats = fe.engine->stats();
    return ms;
  };
  EngineStats sync_stats, async_stats;
  const double sync_ms = run(false, &sync_stats);
  const double async_ms = run(true, &async_stats);
  // sync ≈ 10 × (20 host + 20 device) = 400 ms; async ≈ 11 × max(20, 20) = 220 ms.
  EXPECT_GE(sync_ms, kTokens * 40.0);
  EXPECT_LT(async_ms, 0.75 * sync_ms);
  std::cout << "[ timing   ] sync " << sync_ms << " ms, async " << async_ms << " ms, host overlapped "
            << async_stats.async_overlap_ms_total << " ms, collect wait " << async_stats.async_collect_wait_ms_total
            << " ms, gap " << async_stats.async_gap_ms_total << " ms\n";
  // Every collected step had the injected cost run while it was in flight.
  EXPECT_GE(async_stats.async_overlap_ms_total, kTokens * 20.0);
  EXPECT_GE(async_stats.async_overlap_last_ms, 20.0);
  EXPECT_GE(async_stats.last_step_ms, 20.0);
  EXPECT_EQ(sync_stats.async_overlap_ms_total, 0.0);
  EXPECT_EQ(sync_stats.async_collect_wait_ms_total, 0.0);
}

}  // namespace
}  // namespace mpserve::engine
