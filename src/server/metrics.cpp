#include "server/metrics.h"

#include <fmt/format.h>

#include <algorithm>

namespace mpserve::server {
namespace {

std::string fmt_double(double v) { return fmt::format("{}", v); }

void gauge(const std::string& name, const std::string& help, const std::string& type, const std::string& labels,
           double v, std::string* out) {
  *out += fmt::format("# HELP {} {}\n# TYPE {} {}\n{}{{{}}} {}\n", name, help, name, type, name, labels, fmt_double(v));
}

}  // namespace

std::string prometheus_label_value(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

Histogram::Histogram(std::vector<double> upper_bounds)
    : bounds_(std::move(upper_bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::observe(double v) {
  size_t i = static_cast<size_t>(std::lower_bound(bounds_.begin(), bounds_.end(), v) - bounds_.begin());
  std::lock_guard<std::mutex> lock(mu_);
  ++counts_[i];
  sum_ += v;
  ++count_;
}

void Histogram::render(const std::string& name, const std::string& help, const std::string& labels,
                       std::string* out) const {
  std::lock_guard<std::mutex> lock(mu_);
  *out += fmt::format("# HELP {} {}\n# TYPE {} histogram\n", name, help, name);
  uint64_t cum = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cum += counts_[i];
    *out += fmt::format("{}_bucket{{{},le=\"{}\"}} {}\n", name, labels, fmt_double(bounds_[i]), cum);
  }
  cum += counts_.back();
  *out += fmt::format("{}_bucket{{{},le=\"+Inf\"}} {}\n", name, labels, cum);
  *out += fmt::format("{}_sum{{{}}} {}\n{}_count{{{}}} {}\n", name, labels, fmt_double(sum_), name, labels, count_);
}

ServerMetrics::ServerMetrics(std::string model_name)
    : time_to_first_token({0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                           20.0, 40.0, 80.0}),
      time_per_output_token({0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2,
                             0.3, 0.4, 0.5, 0.75, 1.0, 2.5}),
      e2e_request_latency({0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
                           60.0, 120.0}),
      step_duration({0.0005, 0.001, 0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5,
                     1.0}),
      labels_(fmt::format("model_name=\"{}\"", prometheus_label_value(model_name))) {}

void ServerMetrics::count_finished(const std::string& reason) {
  std::lock_guard<std::mutex> lock(mu_);
  ++finished_[reason];
}

void ServerMetrics::count_response(int status) {
  std::lock_guard<std::mutex> lock(mu_);
  ++responses_[status];
}

std::string ServerMetrics::render(const engine::EngineStats& s) const {
  std::string out;
  const std::string& l = labels_;
  gauge("mpserve_num_requests_running", "Requests in the engine's running batch.", "gauge", l, s.num_running, &out);
  gauge("mpserve_num_requests_waiting", "Requests waiting for the engine to schedule them.", "gauge", l,
        s.num_waiting, &out);
  gauge("mpserve_http_requests_in_flight", "HTTP requests being served.", "gauge", l,
        static_cast<double>(http_in_flight.load()), &out);
  double usage = s.kv_blocks_total > 0 ? static_cast<double>(s.kv_blocks_used) / s.kv_blocks_total : 0.0;
  gauge("mpserve_kv_cache_usage_perc", "Share of KV-cache blocks in use (1 = full).", "gauge", l, usage, &out);
  gauge("mpserve_kv_cache_blocks_used", "KV-cache blocks in use.", "gauge", l, s.kv_blocks_used, &out);
  gauge("mpserve_kv_cache_blocks_total", "KV-cache blocks in all.", "gauge", l, s.kv_blocks_total, &out);
  gauge("mpserve_prompt_tokens_total", "Prompt tokens the engine has prefilled.", "counter", l,
        static_cast<double>(s.prompt_tokens_total), &out);
  gauge("mpserve_generation_tokens_total", "Tokens the engine has generated.", "counter", l,
        static_cast<double>(s.generation_tokens_total), &out);
  gauge("mpserve_num_preemptions_total", "Sequences preempted (recomputed later).", "counter", l,
        static_cast<double>(s.num_preemptions), &out);
  gauge("mpserve_prefix_cache_hit_tokens_total", "Prompt tokens served from the prefix cache.", "counter", l,
        static_cast<double>(s.prefix_cache_hit_tokens), &out);
  gauge("mpserve_engine_steps_total", "Engine steps run.", "counter", l, static_cast<double>(s.steps), &out);
  // note: the engine keeps these in milliseconds; Prometheus' base unit is the second.
  gauge("mpserve_async_overlap_seconds_total",
        "Async scheduling: host time of engine steps spent while the previous step was in flight.", "counter", l,
        s.async_overlap_ms_total / 1e3, &out);
  gauge("mpserve_async_overlap_last_seconds",
        "Async scheduling: host time of the last engine step spent while the previous step was in flight.", "gauge",
        l, s.async_overlap_last_ms / 1e3, &out);
  {
    std::lock_guard<std::mutex> lock(mu_);
    out += "# HELP mpserve_request_success_total Requests the engine finished, by finish reason.\n"
           "# TYPE mpserve_request_success_total counter\n";
    for (const char* r : {"stop", "length", "abort"}) {
      auto it = finished_.find(r);
      out += fmt::format("mpserve_request_success_total{{{},finished_reason=\"{}\"}} {}\n", l, r,
                         it == finished_.end() ? 0 : it->second);
    }
    out += "# HELP mpserve_http_responses_total HTTP responses sent, by status code.\n"
           "# TYPE mpserve_http_responses_total counter\n";
    for (const auto& [code, n] : responses_) {
      out += fmt::format("mpserve_http_responses_total{{{},code=\"{}\"}} {}\n", l, code, n);
    }
  }
  time_to_first_token.render("mpserve_time_to_first_token_seconds", "Time from arrival to the first output token.",
                             l, &out);
  time_per_output_token.render("mpserve_time_per_output_token_seconds",
                               "Mean time between output tokens of a request (after the first).", l, &out);
  e2e_request_latency.render("mpserve_e2e_request_latency_seconds", "Time from arrival to the last output token.", l,
                             &out);
  step_duration.render("mpserve_step_duration_seconds", "Wall time of one engine step.", l, &out);
  return out;
}

}  // namespace mpserve::server
