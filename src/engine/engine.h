// The engine: requests in, tokens and text out. One thread drives step(); nothing here knows
// HTTP, JSON or CUDA. step() = schedule, run the backend, post-process (nano-vllm's shape).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <boost/container/small_vector.hpp>

#include "backend/backend.h"
#include "common/status.h"
#include "tokenizer/tokenizer.h"

namespace mpserve::engine {

struct EngineOptions {
  backend::BackendOptions backend;  // device, block size, limits, ablation
  bool enable_chunked_prefill = true;
  bool enable_prefix_caching = true;
  int max_waiting = 4096;         // add_request fails beyond this many queued requests
  int64_t step_cpu_us = 0;        // study knob: busy-wait this long on the host every step
  // --async-scheduling: step() schedules and builds step t+1 (and pays step_cpu_us) while step t
  // runs on the device (Backend::launch/collect), and launches it before collecting t where the
  // backend takes t's sampled tokens on the device. Outputs are identical to the synchronous
  // mode; each step() returns the outputs of the step launched by the previous call.
  bool async_scheduling = false;
  // Test-only: after this many requests have finished, the next step injects a device fault
  // (Backend::debug_inject_fault) so the supervisor's MPS recovery can be exercised. -1 = off.
  int64_t debug_fault_after_requests = -1;
};

enum class FinishReason { kNone, kStop, kLength, kAborted };
const char* finish_reason_name(FinishReason r);  // "stop" | "length" | "abort" | ""

struct GenerationRequest {
  std::vector<int32_t> prompt;          // token ids, already templated
  backend::SamplingParams sampling;
  int32_t max_tokens = 16;
  std::vector<int32_t> stop_token_ids;  // in addition to the model's eos ids
  std::vector<std::string> stop;        // stop strings; matched text is not returned
  bool ignore_eos = false;
  bool skip_special_tokens = true;
  bool want_logits = false;             // tests: keep the logits of every sampled position
};

// A step's new token ids for one request. A decode step adds one, so up to 4 live inline and
// handing an output over allocates nothing (more spill to the heap). Measured: at batch 256 the
// per-sequence vector was ~13% of the engine's host time (docs/results/cuda_backend.md,
// sixteenth session).
using TokenIds = boost::container::small_vector<int32_t, 4>;

// What one step produced for one request.
struct RequestOutput {
  uint64_t request_id = 0;
  TokenIds new_tokens;
  std::string new_text;                 // UTF-8 complete; held back while it may start a stop string
  bool finished = false;
  FinishReason finish_reason = FinishReason::kNone;
  int32_t prompt_tokens = 0;
  int32_t completion_tokens = 0;
  std::vector<float> logits;            // [new_tokens.size(), vocab] when want_logits
};

struct EngineStats {
  int32_t num_running = 0;
  int32_t num_waiting = 0;
  int32_t kv_blocks_total = 0;
  int32_t kv_blocks_used = 0;
  int64_t num_preemptions = 0;
  int64_t prompt_tokens_total = 0;
  int64_t generation_tokens_total = 0;
  int64_t prefix_cache_hit_tokens = 0;
  int64_t steps = 0;               // step() calls
  double last_step_ms = 0;          // wall time of the last step() call
  // Async scheduling only. Host time of step() spent while the previous step was in flight
  // (injected cost, scheduling, batch building); it hides behind the device when the backend's
  // launch() is asynchronous (Backend::launch_is_async).
  double async_overlap_last_ms = 0;
  double async_overlap_ms_total = 0;
  // Time blocked in Backend::collect(): device time that no host work covered.
  double async_collect_wait_ms_total = 0;
  // Host time between collect(t) and launch(t+1) (post-processing, launch): the device idles.
  // Steps launched before the previous one was collected add nothing here.
  double async_gap_ms_total = 0;
  // Steps launched while the previous step was still in flight (their inputs sampled on the
  // device: Backend::max_steps_in_flight() == 2).
  int64_t async_launched_ahead = 0;
};

class Engine {
 public:
  // `tokenizer` and `backend` must outlive the engine (the backend is owned).
  Engine(const EngineOptions& opts, std::unique_ptr<backend::Backend> backend, const tokenizer::Tokenizer& tokenizer);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Queues a request. Errors: empty prompt, prompt + max_tokens over max_model_len, prompt that
  // can never fit the KV cache, bad sampling params, waiting queue full.
  Result<uint64_t> add_request(GenerationRequest req);
  // Cancels a request and frees its KV blocks now. Unknown ids are ignored. The next step()
  // reports it once more, finished with FinishReason::kAborted.
  void abort_request(uint64_t request_id);
  bool has_unfinished() const;
  // One scheduling step. Returns outputs of the requests that progressed or finished.
  // Async scheduling: launches the next step before returning the previous one's outputs, so
  // the first call returns only aborts and has_unfinished() stays true while a step is in flight.
  std::vector<RequestOutput> step();
  EngineStats stats() const;
  const backend::Backend& backend() const;
  const EngineOptions& options() const;
  // Aborts with a message when the KV block accounting or the scheduler's queues are
  // inconsistent (tests call it after every step).
  void check_invariants() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mpserve::engine
