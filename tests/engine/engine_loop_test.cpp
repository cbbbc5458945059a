#include "engine/engine_loop.h"

#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <mutex>
#include <thread>

#include "engine_fakes.h"

namespace mpserve::engine {
namespace {

using testing::Collected;
using testing::FakeBackendOptions;
using testing::FakeEngine;
using testing::run_alone;

GenerationRequest request(int32_t first, int len, int32_t max_tokens) {
  GenerationRequest r;
  for (int i = 0; i < len; ++i) r.prompt.push_back(2 + (first + i * 7) % 60);
  r.max_tokens = max_tokens;
  r.sampling.temperature = 0.9f;
  r.sampling.seed = static_cast<uint64_t>(first);
  r.ignore_eos = true;
  return r;
}

// Owns the tokenizer the engine refers to; the loop must be destroyed first.
struct LoopFixture {
  explicit LoopFixture(EngineOptions opts = {}, FakeBackendOptions bo = {}) : fe(opts, bo) {
    fake = fe.fake;
    loop = std::make_unique<EngineLoop>(std::move(fe.engine));
  }
  ~LoopFixture() { loop.reset(); }
  FakeEngine fe;
  testing::FakeBackend* fake;
  std::unique_ptr<EngineLoop> loop;
};

// Collects one request's stream; wait() returns when it finished.
struct Stream {
  std::mutex mu;
  Collected c;
  std::promise<void> done;
  EngineLoop::Callback callback() {
    return [this](const RequestOutput& o) {
      std::lock_guard<std::mutex> lk(mu);
      c.tokens.insert(c.tokens.end(), o.new_tokens.begin(), o.new_tokens.end());
      c.text += o.new_text;
      c.reason = o.finish_reason;
      ++c.outputs;
      if (o.finished) {
        c.finished = true;
        done.set_value();
      }
    };
  }
};

// The k-th request a Submitters thread sends: prompt length and max_tokens vary with k.
GenerationRequest submitted_request(int k) { return request(k, 3 + k % 11, 4 + k % 9); }

// `threads` threads, each submitting `per_thread` requests one after another and waiting for
// each to finish before the next; join() returns what each thread received, in order.
class Submitters {
 public:
  Submitters(EngineLoop& loop, int threads, int per_thread) : results_(threads) {
    for (int t = 0; t < threads; ++t) {
      threads_.emplace_back([this, &loop, t, per_thread] {
        for (int i = 0; i < per_thread; ++i) {
          Stream s;
          auto id = loop.submit(submitted_request(t * per_thread + i), s.callback());
          ASSERT_TRUE(id.is_ok()) << id.error();
          s.done.get_future().wait();
          std::lock_guard<std::mutex> lk(s.mu);
          results_[t].push_back(s.c);
        }
      });
    }
  }
  ~Submitters() {
    for (auto& th : threads_) {
      if (th.joinable()) th.join();
    }
  }
  std::vector<std::vector<Collected>> join() {
    for (auto& th : threads_) th.join();
    return std::move(results_);
  }

 private:
  std::vector<std::vector<Collected>> results_;  // [thread][request]
  std::vector<std::thread> threads_;
};

// Every request of a Submitters run produced what it produces alone and ran to max_tokens.
void expect_solo_results(const std::vector<std::vector<Collected>>& results, int per_thread) {
  for (size_t t = 0; t < results.size(); ++t) {
    EXPECT_EQ(results[t].size(), static_cast<size_t>(per_thread)) << "thread " << t;
    for (size_t i = 0; i < results[t].size(); ++i) {
      const int k = static_cast<int>(t) * per_thread + static_cast<int>(i);
      EXPECT_EQ(results[t][i].tokens, run_alone(submitted_request(k)).tokens) << "request " << k;
      EXPECT_EQ(results[t][i].reason, FinishReason::kLength);
    }
  }
}

TEST(EngineLoop, engine_loop_serves_submissions_from_many_threads) {
  EngineOptions opts;
  opts.backend.max_num_seqs = 8;
  opts.backend.max_num_batched_tokens = 16;
  FakeBackendOptions bo;
  bo.num_blocks = 24;  // tight: preemption happens under the threads' load
  LoopFixture f(opts, bo);
  const int kThreads = 4, kPerThread = 8;
  Submitters submitters(*f.loop, kThreads, kPerThread);
  const std::vector<std::vector<Collected>> results = submitters.join();
  expect_solo_results(results, kPerThread);
  const EngineStats s = f.loop->stats();
  EXPECT_EQ(s.generation_tokens_total, [&] {
    int64_t n = 0;
    for (auto& r : results)
      for (auto& c : r) n += static_cast<int64_t>(c.tokens.size());
    return n;
  }());
  EXPECT_EQ(s.kv_blocks_used, 0);
  EXPECT_EQ(f.fake->errors, 0);
}

TEST(EngineLoop, engine_loop_with_async_scheduling_matches_solo_runs_and_aborts_once) {
  EngineOptions opts;
  opts.async_scheduling = true;
  opts.step_cpu_us = 500;
  opts.backend.max_num_seqs = 8;
  opts.backend.max_num_batched_tokens = 16;
  FakeBackendOptions bo;
  bo.num_blocks = 24;
  LoopFixture f(opts, bo);
  // A long request aborted while its steps are in flight ends with exactly one abort output
  // (a second finished output would set the stream's promise twice).
  Stream aborted;
  auto long_id = f.loop->submit(request(99, 5, 60), aborted.callback());
  ASSERT_TRUE(long_id.is_ok()) << long_id.error();
  const int kThreads = 3, kPerThread = 4;
  Submitters submitters(*f.loop, kThreads, kPerThread);
  for (int i = 0; i < 2000; ++i) {
    {
      std::lock_guard<std::mutex> lk(aborted.mu);
      if (aborted.c.tokens.size() >= 2) break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  f.loop->abort(*long_id);
  const std::vector<std::vector<Collected>> results = submitters.join();
  ASSERT_EQ(aborted.done.get_future().wait_for(std::chrono::seconds(10)), std::future_status::ready);
  EXPECT_EQ(aborted.c.reason, FinishReason::kAborted);
  EXPECT_GE(aborted.c.tokens.size(), 2u);
  EXPECT_LT(aborted.c.tokens.size(), 60u);
  expect_solo_results(results, kPerThread);
  f.loop->drain_and_stop(EngineLoop::Clock::now() + std::chrono::seconds(10));
  EXPECT_EQ(f.loop->stats().kv_blocks_used, 0);
  EXPECT_EQ(f.fake->errors, 0);
}

TEST(EngineLoop, engine_loop_rejects_bad_request_synchronously) {
  LoopFixture f;
  GenerationRequest r;
  auto id = f.loop->submit(r, [](const RequestOutput&) { FAIL() << "no output for a refused request"; });
  ASSERT_FALSE(id.is_ok());
  EXPECT_NE(id.error().find("prompt is empty"), std::string::npos);
}

TEST(EngineLoop, engine_loop_abort_ends_stream_with_abort) {
  EngineOptions opts;
  opts.step_cpu_us = 2000;  // slow steps so the abort lands mid-generation
  LoopFixture f(opts);
  Stream s;
  auto id = f.loop->submit(request(1, 5, 200), s.callback());
  ASSERT_TRUE(id.is_ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  f.loop->abort(*id);
  ASSERT_EQ(s.done.get_future().wait_for(std::chrono::seconds(10)), std::future_status::ready);
  EXPECT_EQ(s.c.reason, FinishReason::kAborted);
  EXPECT_LT(s.c.tokens.size(), 200u);
  // The stats snapshot catches up after the next step; poll briefly.
  for (int i = 0; i < 100 && f.loop->stats().kv_blocks_used != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(f.loop->stats().kv_blocks_used, 0);
}

TEST(EngineLoop, engine_loop_drain_finishes_work_then_refuses_new) {
  LoopFixture f;
  Stream s;
  ASSERT_TRUE(f.loop->submit(request(2, 5, 20), s.callback()).is_ok());
  f.loop->drain_and_stop(EngineLoop::Clock::now() + std::chrono::seconds(30));
  EXPECT_TRUE(s.c.finished);
  EXPECT_EQ(s.c.reason, FinishReason::kLength);
  EXPECT_EQ(s.c.tokens.size(), 20u);
  auto again = f.loop->submit(request(3, 5, 2), [](const RequestOutput&) {});
  ASSERT_FALSE(again.is_ok());
  EXPECT_NE(again.error().find("shutting down"), std::string::npos);
  f.loop->drain_and_stop(EngineLoop::Clock::now());  // idempotent
}

TEST(EngineLoop, engine_loop_drain_aborts_what_is_left_at_the_deadline) {
  EngineOptions opts;
  opts.step_cpu_us = 2000;
  LoopFixture f(opts);
  Stream s;
  ASSERT_TRUE(f.loop->submit(request(4, 5, 200), s.callback()).is_ok());
  const auto t0 = EngineLoop::Clock::now();
  f.loop->drain_and_stop(t0 + std::chrono::milliseconds(30));
  EXPECT_LT(EngineLoop::Clock::now() - t0, std::chrono::seconds(5));
  EXPECT_TRUE(s.c.finished);
  EXPECT_EQ(s.c.reason, FinishReason::kAborted);
}

TEST(EngineLoop, engine_loop_sleeps_when_idle) {
  LoopFixture f;
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  // No work: the loop never stepped (a busy spin would step or at least burn CPU).
  EXPECT_EQ(f.loop->stats().steps, 0);
  EXPECT_TRUE(f.fake->steps.empty());
}

}  // namespace
}  // namespace mpserve::engine
