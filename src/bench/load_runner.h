// Drives the load of `bench serve`: issues streamed completion requests (closed loop or Poisson
// open loop, bounded by a count or a time window), and records each request's timeline. Turning
// the records into throughput and latency figures is serve_bench.cpp's job.
#pragma once

#include <cstdint>
#include <cstdio>
#include <deque>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "bench/http_stream.h"

namespace mpserve::bench {

struct RequestRecord {
  enum class State { kRunning, kCompleted, kFailed, kCancelled };
  State state = State::kRunning;
  Clock::time_point start, end;
  // Arrival of each SSE event that carried tokens (a non-empty `choices` list).
  std::vector<Clock::time_point> token_events;
  int64_t prompt_tokens = -1;      // from usage; -1: the server sent none
  int64_t completion_tokens = -1;  // from usage; -1: the server sent none
  bool short_output = false;       // completed with fewer tokens than asked
  std::string error;               // kFailed: why

  int64_t output_tokens() const {
    return completion_tokens >= 0 ? completion_tokens : static_cast<int64_t>(token_events.size());
  }
};

struct LoadPlan {
  int64_t num_requests = 0;   // count mode (duration_s == 0)
  int concurrency = 1;        // closed loop: in flight; open loop: cap (0 = none)
  double request_rate = 0;    // > 0: open loop
  double warmup_s = 0;
  double duration_s = 0;      // > 0: window mode
  double timeout_s = 600;
  int expected_output = 0;    // tokens each request must return (short_output below it)
  bool strict_output_len = false;
  uint64_t seed = 0;
  std::string path = "/v1/completions";
  FILE* progress = nullptr;   // a terminal to draw the progress bar on, or null
};

struct LoadRun {
  Clock::time_point t0;                 // the run's start: the first request starts here
  std::deque<RequestRecord> records;    // in issue order (index = request number)
};

// Builds request `index`'s JSON body.
using BodyFn = std::function<std::string(int64_t index)>;

LoadRun run_load(const LoadPlan& plan, const HttpEndpoint& ep, const std::vector<boost::asio::ip::tcp::endpoint>& addrs,
                 const BodyFn& body);

// Applies one SSE event (`data` payload) arriving at `t` to `rec`. Sets *done on [DONE]; a broken
// or error event sets rec->error (the first one wins). Exposed for tests.
void apply_stream_event(std::string_view data, Clock::time_point t, RequestRecord* rec, bool* done);

}  // namespace mpserve::bench
