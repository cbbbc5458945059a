#include "router/engine_pool.h"

#include <fmt/format.h>

namespace mpserve::router {

std::string EngineAddress::url() const { return fmt::format("http://{}:{}", host, port); }

Result<EngineAddress> parse_engine_url(const std::string& url) {
  std::string rest = url;
  if (rest.rfind("http://", 0) == 0) rest = rest.substr(7);
  else if (rest.find("://") != std::string::npos) return Status::errorf("engine URL '{}': only http:// is supported", url);
  rest = rest.substr(0, rest.find('/'));
  size_t colon = rest.rfind(':');
  if (colon == std::string::npos || colon == 0) return Status::errorf("engine URL '{}' needs host:port", url);
  EngineAddress a;
  a.host = rest.substr(0, colon);
  try {
    size_t used = 0;
    a.port = std::stoi(rest.substr(colon + 1), &used);
    if (used != rest.size() - colon - 1) throw std::invalid_argument("trailing");
  } catch (const std::exception&) {
    return Status::errorf("engine URL '{}': bad port", url);
  }
  if (a.port <= 0 || a.port > 65535) return Status::errorf("engine URL '{}': port out of range", url);
  return a;
}

size_t EnginePool::add(const EngineAddress& address, int gpu) {
  std::lock_guard lock(mu_);
  Engine e;
  e.address = address;
  e.gpu = gpu;
  engines_.push_back(e);
  return engines_.size() - 1;
}

size_t EnginePool::size() const {
  std::lock_guard lock(mu_);
  return engines_.size();
}

bool EnginePool::available_locked(const Engine& e) const {
  return e.healthy && (e.managed_state.empty() || e.managed_state == "running");
}

std::string EnginePool::state_locked(const Engine& e) const {
  if (!e.managed_state.empty() && e.managed_state != "running") return e.managed_state;
  return e.healthy ? "healthy" : "unhealthy";
}

std::optional<Lease> EnginePool::acquire(Policy& policy, std::string_view prompt_prefix, int64_t tokens,
                                         const std::vector<size_t>& exclude) {
  std::lock_guard lock(mu_);
  std::vector<EngineLoad> loads(engines_.size());
  for (size_t i = 0; i < engines_.size(); ++i) {
    loads[i].id = engines_[i].address.url();
    loads[i].available = available_locked(engines_[i]);
    loads[i].outstanding_requests = engines_[i].outstanding_requests;
    loads[i].outstanding_tokens = engines_[i].outstanding_tokens;
  }
  std::optional<size_t> pick = policy.choose(loads, prompt_prefix, exclude);
  if (!pick) return std::nullopt;
  Engine& e = engines_[*pick];
  e.outstanding_requests += 1;
  e.outstanding_tokens += tokens;
  e.requests_total += 1;
  return Lease{*pick, tokens, e.address};
}

void EnginePool::release(const Lease& lease, Outcome outcome) {
  std::lock_guard lock(mu_);
  Engine& e = engines_[lease.engine];
  e.outstanding_requests -= 1;
  e.outstanding_tokens -= lease.tokens;
  switch (outcome) {
    case Outcome::kOk: break;
    case Outcome::kFailedBeforeBytes: e.failed_before_bytes_total += 1; break;
    case Outcome::kFailedMidStream: e.failed_mid_stream_total += 1; break;
    case Outcome::kClientError: e.client_errors_total += 1; break;
  }
}

size_t EnginePool::available_count() const {
  std::lock_guard lock(mu_);
  size_t n = 0;
  for (const Engine& e : engines_) n += available_locked(e) ? 1 : 0;
  return n;
}

int64_t EnginePool::in_flight() const {
  std::lock_guard lock(mu_);
  int64_t n = 0;
  for (const Engine& e : engines_) n += e.outstanding_requests;
  return n;
}

void EnginePool::report_probe(size_t engine, bool ok, int consecutive_failures_to_down) {
  std::lock_guard lock(mu_);
  Engine& e = engines_[engine];
  bool was = e.healthy;
  if (ok) {
    e.probe_failures = 0;
    e.healthy = true;
  } else if (++e.probe_failures >= consecutive_failures_to_down) {
    e.healthy = false;
  }
  if (was != e.healthy) e.health_transitions_total += 1;
}

void EnginePool::mark_unreachable(size_t engine) {
  std::lock_guard lock(mu_);
  Engine& e = engines_[engine];
  if (e.healthy) e.health_transitions_total += 1;
  e.healthy = false;
}

void EnginePool::set_managed(size_t engine, const std::string& managed_state, int pid) {
  std::lock_guard lock(mu_);
  Engine& e = engines_[engine];
  e.managed_state = managed_state;
  e.pid = pid;
  // The supervisor calls an engine running only after its own /health probe passed.
  if (managed_state == "running") {
    e.healthy = true;
    e.probe_failures = 0;
  } else {
    e.healthy = false;
  }
}

void EnginePool::set_restarts(size_t engine, int restarts) {
  std::lock_guard lock(mu_);
  engines_[engine].restarts = restarts;
}

bool EnginePool::healthy(size_t engine) const {
  std::lock_guard lock(mu_);
  return engines_[engine].healthy;
}

void EnginePool::count_retry() {
  std::lock_guard lock(mu_);
  retries_total_ += 1;
}

std::vector<std::pair<size_t, EngineAddress>> EnginePool::probe_targets() const {
  std::lock_guard lock(mu_);
  std::vector<std::pair<size_t, EngineAddress>> out;
  for (size_t i = 0; i < engines_.size(); ++i) {
    const Engine& e = engines_[i];
    if (e.managed_state.empty() || e.managed_state == "running") out.emplace_back(i, e.address);
  }
  return out;
}

nlohmann::json EnginePool::admin_json() const {
  std::lock_guard lock(mu_);
  nlohmann::json engines = nlohmann::json::array();
  for (const Engine& e : engines_) {
    engines.push_back({{"url", e.address.url()},
                       {"pid", e.pid},
                       {"gpu", e.gpu},
                       {"state", state_locked(e)},
                       {"available", available_locked(e)},
                       {"outstanding_requests", e.outstanding_requests},
                       {"outstanding_tokens", e.outstanding_tokens},
                       {"restarts", e.restarts},
                       {"requests_total", e.requests_total},
                       {"failed_before_bytes_total", e.failed_before_bytes_total},
                       {"failed_mid_stream_total", e.failed_mid_stream_total}});
  }
  return {{"engines", engines}, {"retries_total", retries_total_}};
}

std::string EnginePool::metrics_text() const {
  std::lock_guard lock(mu_);
  std::string out;
  auto family = [&](const char* name, const char* type, const char* help, auto value_of) {
    out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
    for (const Engine& e : engines_) {
      out += fmt::format("{}{{engine=\"{}\",gpu=\"{}\"}} {}\n", name, e.address.url(), e.gpu, value_of(e));
    }
  };
  family("mpserve_router_engine_up", "gauge", "1 when the engine is in rotation",
         [&](const Engine& e) { return available_locked(e) ? 1 : 0; });
  family("mpserve_router_engine_outstanding_requests", "gauge", "requests in flight on the engine",
         [](const Engine& e) { return e.outstanding_requests; });
  family("mpserve_router_engine_outstanding_tokens", "gauge", "prompt estimate plus max_tokens in flight",
         [](const Engine& e) { return e.outstanding_tokens; });
  family("mpserve_router_engine_requests_total", "counter", "requests sent to the engine",
         [](const Engine& e) { return e.requests_total; });
  family("mpserve_router_engine_failed_before_bytes_total", "counter",
         "requests that failed on the engine before any byte reached the client (retried)",
         [](const Engine& e) { return e.failed_before_bytes_total; });
  family("mpserve_router_engine_failed_mid_stream_total", "counter",
         "streams the engine broke off after bytes reached the client (ended with an error event)",
         [](const Engine& e) { return e.failed_mid_stream_total; });
  family("mpserve_router_engine_restarts_total", "counter", "times the supervisor restarted the engine",
         [](const Engine& e) { return e.restarts; });

  uint64_t requests = 0, mid = 0;
  int64_t in_flight = 0;
  size_t up = 0;
  for (const Engine& e : engines_) {
    requests += e.requests_total;
    mid += e.failed_mid_stream_total;
    in_flight += e.outstanding_requests;
    up += available_locked(e) ? 1 : 0;
  }
  out += fmt::format("# TYPE mpserve_router_engines_available gauge\nmpserve_router_engines_available {}\n", up);
  out += fmt::format("# TYPE mpserve_router_engines_total gauge\nmpserve_router_engines_total {}\n", engines_.size());
  out += fmt::format("# TYPE mpserve_router_in_flight gauge\nmpserve_router_in_flight {}\n", in_flight);
  out += fmt::format("# TYPE mpserve_router_engine_attempts_total counter\nmpserve_router_engine_attempts_total {}\n",
                     requests);
  out += fmt::format("# TYPE mpserve_router_retries_total counter\nmpserve_router_retries_total {}\n", retries_total_);
  out += fmt::format("# TYPE mpserve_router_mid_stream_errors_total counter\nmpserve_router_mid_stream_errors_total {}\n",
                     mid);
  return out;
}

}  // namespace mpserve::router
