// The router: an HTTP front (Boost.Beast, C++20 coroutines on an asio thread pool) that proxies
// OpenAI requests to the engines of an EnginePool, streaming SSE through chunk by chunk.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/status.h"
#include "router/engine_pool.h"
#include "router/policy.h"

namespace mpserve::router {

struct RouterOptions {
  std::string host = "127.0.0.1";
  int port = 8000;  // 0 = any free port (tests)
  int threads = 2;
  // How long a request waits for an engine while none is available (restart, MPS recovery) before 503.
  std::chrono::milliseconds hold_timeout{30'000};
  // Engines tried for one request before it fails; each must fail before any byte reached the client.
  int max_attempts = 6;
  std::chrono::milliseconds connect_timeout{2'000};
  // Longest silence from an engine while it works on a request (no byte of header or body).
  std::chrono::milliseconds read_timeout{600'000};
  std::chrono::milliseconds health_interval{1'000};
  std::chrono::milliseconds health_timeout{1'000};
  int health_failures_to_down = 2;
};

class Router {
 public:
  Router(RouterOptions options, EnginePool& pool, PolicyKind policy);
  ~Router();
  Router(const Router&) = delete;
  Router& operator=(const Router&) = delete;

  // Extra Prometheus text and /health fields (the supervisor's MPS state); set before start().
  void set_metrics_hook(std::function<std::string()> hook) { metrics_hook_ = std::move(hook); }
  void set_health_hook(std::function<nlohmann::json()> hook) { health_hook_ = std::move(hook); }

  // Binds, then serves on `threads` threads and probes engines on one more.
  Status start();
  int port() const { return bound_port_; }
  // Stops accepting, then waits until no request is in flight or `timeout` passed.
  void drain(std::chrono::milliseconds timeout);
  // Stops everything and joins the threads; idempotent.
  void stop();

 private:
  struct Impl;
  void health_loop();

  RouterOptions options_;
  EnginePool& pool_;
  Policy policy_;
  std::function<std::string()> metrics_hook_;
  std::function<nlohmann::json()> health_hook_;
  std::unique_ptr<Impl> impl_;
  int bound_port_ = 0;
  std::vector<std::thread> threads_;
  std::thread health_thread_;
  std::atomic<bool> stopping_{false};
};

}  // namespace mpserve::router
