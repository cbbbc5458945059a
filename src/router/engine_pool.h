// The engines behind the router: address, health, load, counters. Shared by the router's request
// coroutines, its health checker and the supervisor; every member is guarded by one mutex.
#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/status.h"
#include "router/policy.h"

namespace mpserve::router {

struct EngineAddress {
  std::string host;
  int port = 0;
  std::string url() const;
};

// Parses "http://host:port" (path ignored) or "host:port".
Result<EngineAddress> parse_engine_url(const std::string& url);

// One request's claim on an engine; give it back with EnginePool::release.
struct Lease {
  size_t engine = 0;
  int64_t tokens = 0;
  EngineAddress address;
};

// How a proxied request ended, for the per-engine counters.
enum class Outcome { kOk, kFailedBeforeBytes, kFailedMidStream, kClientError };

class EnginePool {
 public:
  // Adds an engine; returns its index. `gpu` is -1 for engines the router did not place.
  size_t add(const EngineAddress& address, int gpu = -1);
  size_t size() const;

  // Picks an engine by `policy` and charges the request to it.
  std::optional<Lease> acquire(Policy& policy, std::string_view prompt_prefix, int64_t tokens,
                               const std::vector<size_t>& exclude);
  void release(const Lease& lease, Outcome outcome);
  size_t available_count() const;
  int64_t in_flight() const;

  // Active health checks report here. `consecutive_failures_to_down` failures take an engine out.
  void report_probe(size_t engine, bool ok, int consecutive_failures_to_down);
  // A connection error on a real request takes the engine out at once; the health checker brings it back.
  void mark_unreachable(size_t engine);

  // The supervisor's view: while `managed_state` is not "running", the engine is out of rotation
  // whatever the health checks say (it is being started, restarted or recovered).
  void set_managed(size_t engine, const std::string& managed_state, int pid);
  void set_restarts(size_t engine, int restarts);
  // The health checker's verdict alone (the supervisor restarts a running engine that stays unhealthy).
  bool healthy(size_t engine) const;
  void count_retry();
  // Engines the health checker should probe: all but those the supervisor holds out.
  std::vector<std::pair<size_t, EngineAddress>> probe_targets() const;

  nlohmann::json admin_json() const;
  // Prometheus text: per-engine series and aggregates (the supervisor appends MPS series).
  std::string metrics_text() const;

 private:
  struct Engine {
    EngineAddress address;
    int gpu = -1;
    int pid = -1;
    bool healthy = false;
    int probe_failures = 0;
    // Empty for engines nobody supervises.
    std::string managed_state;
    int restarts = 0;
    int64_t outstanding_requests = 0;
    int64_t outstanding_tokens = 0;
    uint64_t requests_total = 0;
    uint64_t failed_before_bytes_total = 0;
    uint64_t failed_mid_stream_total = 0;
    uint64_t client_errors_total = 0;
    uint64_t health_transitions_total = 0;
  };
  bool available_locked(const Engine& e) const;
  std::string state_locked(const Engine& e) const;

  mutable std::mutex mu_;
  std::vector<Engine> engines_;
  uint64_t retries_total_ = 0;
};

}  // namespace mpserve::router
