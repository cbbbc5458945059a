// Prometheus metrics of one engine server: counters and histograms the HTTP layer observes,
// plus the engine's own gauges and counters read at scrape time. Text exposition format 0.0.4.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "engine/engine.h"

namespace mpserve::server {

// A cumulative histogram with fixed upper bounds (seconds). Thread-safe.
class Histogram {
 public:
  explicit Histogram(std::vector<double> upper_bounds);
  void observe(double v);
  // Appends the _bucket/_sum/_count lines of metric `name` (HELP and TYPE included).
  void render(const std::string& name, const std::string& help, const std::string& labels, std::string* out) const;

 private:
  std::vector<double> bounds_;
  mutable std::mutex mu_;
  std::vector<uint64_t> counts_;  // [bounds_.size() + 1]; the last is +Inf
  double sum_ = 0;
  uint64_t count_ = 0;
};

class ServerMetrics {
 public:
  explicit ServerMetrics(std::string model_name);

  Histogram time_to_first_token;
  Histogram time_per_output_token;
  Histogram e2e_request_latency;
  Histogram step_duration;

  // A request that reached the engine finished with this reason ("stop", "length", "abort").
  void count_finished(const std::string& reason);
  // An HTTP response was sent with this status code.
  void count_response(int status);
  std::atomic<int64_t> http_in_flight{0};

  std::string render(const engine::EngineStats& s) const;

 private:
  std::string labels_;  // model_name="..."
  mutable std::mutex mu_;
  std::map<std::string, uint64_t> finished_;
  std::map<int, uint64_t> responses_;
};

// Escapes a Prometheus label value (backslash, quote, newline).
std::string prometheus_label_value(const std::string& v);

}  // namespace mpserve::server
