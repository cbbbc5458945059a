// EngineLoop: one engine thread that owns an Engine, fed by other threads through a queue
// (the llama.cpp server's shape). HTTP threads submit native requests and receive outputs
// through callbacks; only the engine thread ever touches the Engine.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include "common/status.h"
#include "engine/engine.h"

namespace mpserve::engine {

class EngineLoop {
 public:
  using Clock = std::chrono::steady_clock;
  // Runs on the engine thread for every output of the request, the last one with
  // finished=true. Must be quick and must not block on the loop (it may call abort()).
  using Callback = std::function<void(const RequestOutput&)>;

  // Starts the engine thread.
  explicit EngineLoop(std::unique_ptr<Engine> engine);
  // drain_and_stop(now) if still running: unfinished requests end with kAborted.
  ~EngineLoop();
  EngineLoop(const EngineLoop&) = delete;
  EngineLoop& operator=(const EngineLoop&) = delete;

  // Thread-safe. Hands the request to the engine thread and waits until it is validated
  // (at most one engine step). Returns the request id, or why it was refused (bad input,
  // queue full, loop stopping).
  Result<uint64_t> submit(GenerationRequest request, Callback on_output);
  // Thread-safe. The request's callback then gets a final output with kAborted (unless it
  // finished first). Unknown ids are ignored.
  void abort(uint64_t request_id);
  // Thread-safe snapshot, refreshed after every step and before that step's outputs reach their
  // callbacks: a caller that has seen an output never reads stats from before it.
  EngineStats stats() const;
  // Thread-safe. Refuses new requests, lets running ones finish until `deadline`, aborts what
  // is left, and joins the engine thread. Idempotent; must not be called from a callback.
  void drain_and_stop(Clock::time_point deadline);
  // Immutable parts of the engine (options, backend config and name); safe from any thread.
  const EngineOptions& options() const { return engine_->options(); }
  const backend::Backend& backend() const { return engine_->backend(); }

 private:
  struct Submission {
    GenerationRequest request;
    Callback on_output;
    std::promise<Result<uint64_t>> result;
  };

  void run();
  void deliver(std::vector<RequestOutput> outputs);

  std::unique_ptr<Engine> engine_;

  // Guards everything below up to the thread.
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::unique_ptr<Submission>> inbox_;
  std::vector<uint64_t> aborts_;
  bool draining_ = false;
  Clock::time_point deadline_ = Clock::time_point::max();
  EngineStats stats_;

  // Engine thread only: the callback of every request the engine holds.
  std::unordered_map<uint64_t, Callback> callbacks_;
  std::mutex join_mu_;  // serializes concurrent drain_and_stop calls
  std::thread thread_;
};

}  // namespace mpserve::engine
