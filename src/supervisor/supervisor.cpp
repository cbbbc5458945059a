#include "supervisor/supervisor.h"

#include <signal.h>
#include <sys/wait.h>

#include <algorithm>
#include <cmath>
#include <fstream>

#include <fmt/format.h>

#include "common/env.h"
#include "common/log.h"
#include "router/http_get.h"
#include "supervisor/process.h"

namespace mpserve::supervisor {
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {
constexpr auto kTick = std::chrono::milliseconds(50);
constexpr auto kReadyProbeEvery = std::chrono::milliseconds(200);
constexpr auto kReadyProbeTimeout = std::chrono::milliseconds(1'000);
constexpr auto kMpsQuitTimeout = std::chrono::milliseconds(10'000);

// note: what a CUDA client prints when its context died under it (its own fault or a neighbour's on
// the same MPS server); seen in an engine's log after it exits, it marks a shared-fate fault.
bool is_cuda_fault_text(const std::string& text) {
  std::string l = text;
  std::transform(l.begin(), l.end(), l.begin(), [](unsigned char c) { return std::tolower(c); });
  for (const char* s : {"illegal address", "illegal memory access", "cudaerrorillegaladdress", "mps server",
                        "cudaerrormps", "cuda_error_mps", "unspecified launch failure"}) {
    if (l.find(s) != std::string::npos) return true;
  }
  return false;
}
}  // namespace

Supervisor::Supervisor(SupervisorOptions options, router::EnginePool& pool)
    : options_(std::move(options)), pool_(pool) {}

Supervisor::~Supervisor() { shutdown(); }

Status Supervisor::prepare() {
  if (options_.gpus.empty()) return Status::error("no GPU listed");
  if (options_.engines_per_gpu < 1) return Status::error("--engines must be at least 1");
  const int n = options_.engines_per_gpu;
  if (!options_.sm_percent.empty() && options_.sm_percent.size() != 1 && static_cast<int>(options_.sm_percent.size()) != n) {
    return Status::errorf("--sm-percent takes one value or one per engine ({}), got {}", n, options_.sm_percent.size());
  }
  for (int p : options_.sm_percent) {
    if (p < 1 || p > 100) return Status::errorf("--sm-percent {} is outside 1..100", p);
  }
  std::string mem_limit;
  if (!options_.engine_mem_limit.empty()) {
    MPS_ASSIGN_OR_RETURN(mem_limit, parse_mem_limit(options_.engine_mem_limit));
  }
  double fraction = options_.memory_fraction > 0 ? options_.memory_fraction : std::floor(900.0 / n) / 1000.0;

  std::error_code ec;
  fs::create_directories(options_.runtime_dir / "logs", ec);
  if (ec) return Status::errorf("cannot create runtime dir {}: {}", options_.runtime_dir.string(), ec.message());
  options_.runtime_dir = fs::absolute(options_.runtime_dir);

  for (int gpu : options_.gpus) {
    Gpu g;
    g.gpu = gpu;
    if (options_.mps) {
      MpsDaemonOptions d;
      d.gpu = gpu;
      d.pipe_dir = options_.runtime_dir / fmt::format("mps-gpu{}", gpu) / "pipe";
      d.log_dir = options_.runtime_dir / fmt::format("mps-gpu{}", gpu) / "log";
      d.control_bin = options_.mps_control_bin;
      d.remove_stale = options_.mps_remove_stale;
      d.extra_env = {{env::kSupervisorToken, options_.token}};
      if (options_.sm_percent.size() == 1) d.default_active_thread_percentage = options_.sm_percent[0];
      d.default_pinned_mem_limit = mem_limit;
      g.daemon = std::make_unique<MpsDaemon>(d);
    }
    for (int slot = 0; slot < n; ++slot) {
      Engine e;
      EngineLaunch& l = e.launch;
      l.index = static_cast<int>(engines_.size());
      l.gpu = gpu;
      MPS_ASSIGN_OR_RETURN(l.port, pick_free_port());
      l.log_file = options_.runtime_dir / "logs" / fmt::format("engine-{}-gpu{}.log", l.index, gpu);
      // note: an MPS client sees only the devices its daemon was started with (one here), so every
      // engine addresses device 0; without MPS, CUDA_VISIBLE_DEVICES narrows it to its GPU the same way.
      std::map<std::string, std::string> values{{"port", std::to_string(l.port)},
                                                {"gpu", "0"},
                                                {"physical_gpu", std::to_string(gpu)},
                                                {"model", options_.model},
                                                {"memory_fraction", fmt::format("{:.3f}", fraction)},
                                                {"index", std::to_string(l.index)},
                                                {"host", "127.0.0.1"}};
      if (options_.engine_cmd.empty()) {
        l.argv = {options_.self_exe, "engine", "--port", values["port"], "--device", options_.device};
        if (options_.device != "cpu") {
          for (const char* a : {"--gpu", "0", "--gpu-memory-fraction"}) l.argv.push_back(a);
          l.argv.push_back(values["memory_fraction"]);
        }
        if (!options_.model.empty()) {
          l.argv.push_back("--model");
          l.argv.push_back(options_.model);
        }
        if (!options_.engine_args.empty()) {
          MPS_ASSIGN_OR_RETURN(std::string extra, expand_template(options_.engine_args, values));
          MPS_ASSIGN_OR_RETURN(std::vector<std::string> more, split_command(extra));
          l.argv.insert(l.argv.end(), more.begin(), more.end());
        }
      } else {
        MPS_ASSIGN_OR_RETURN(std::string cmd, expand_template(options_.engine_cmd, values));
        // exec: the shell becomes the engine, so the pid we hold is the engine's.
        l.argv = {"/bin/sh", "-c", "exec " + cmd};
      }
      l.env_set.emplace_back(env::kSupervisorToken, options_.token);
      if (options_.mps) {
        for (const auto& kv : g.daemon->client_env()) l.env_set.push_back(kv);
        if (!options_.sm_percent.empty()) {
          int p = options_.sm_percent.size() == 1 ? options_.sm_percent[0] : options_.sm_percent[slot];
          l.env_set.emplace_back(env::kMpsActiveThreadPct, std::to_string(p));
        }
        if (!mem_limit.empty()) l.env_set.emplace_back(env::kMpsPinnedMemLimit, "0=" + mem_limit);
        l.env_unset.push_back(env::kCudaVisibleDevices);
      } else if (options_.device != "cpu") {
        l.env_set.emplace_back(env::kCudaVisibleDevices, std::to_string(gpu));
      }
      g.engines.push_back(engines_.size());
      size_t pool_index = pool_.add(router::EngineAddress{"127.0.0.1", l.port}, gpu);
      if (pool_index != engines_.size()) return Status::error("supervisor: engine pool was not empty");
      engines_.push_back(std::move(e));
    }
    gpus_.push_back(std::move(g));
  }
  for (size_t i = 0; i < engines_.size(); ++i) publish(i, "stopped");
  return Status::ok();
}

std::vector<MpsDaemonOptions> Supervisor::daemon_options() const {
  std::vector<MpsDaemonOptions> out;
  for (const Gpu& g : gpus_) {
    if (g.daemon) out.push_back(g.daemon->options());
  }
  return out;
}

void Supervisor::publish(size_t i, const char* state) {
  pool_.set_managed(i, state, engines_[i].pid);
  pool_.set_restarts(i, engines_[i].restarts);
}

Status Supervisor::spawn(size_t i) {
  Engine& e = engines_[i];
  SpawnSpec spec;
  spec.argv = e.launch.argv;
  spec.env_set = e.launch.env_set;
  spec.env_unset = e.launch.env_unset;
  spec.log_file = e.launch.log_file;
  {
    std::ofstream log(spec.log_file, std::ios::app);
    log << "\n=== mpserve: starting engine " << i << " on port " << e.launch.port << " (restart " << e.restarts
        << ") ===\n";
  }
  Result<pid_t> pid = spawn_process(spec);
  if (!pid) return pid.status();
  e.pid = *pid;
  e.state = State::kStarting;
  e.started = Clock::now();
  e.next_ready_probe = e.started;
  e.unhealthy = false;
  publish(i, "starting");
  log::info("engine {} (GPU {}, port {}): started, pid {}", i, e.launch.gpu, e.launch.port, e.pid);
  return Status::ok();
}

Status Supervisor::start() {
  for (Gpu& g : gpus_) {
    if (!g.daemon) continue;
    MPS_RETURN_IF_ERROR(g.daemon->start());
    g.daemon_up = true;
    g.next_probe = Clock::now() + options_.mps_probe_interval;
  }
  for (size_t i = 0; i < engines_.size(); ++i) MPS_RETURN_IF_ERROR(spawn(i));
  take_snapshot();
  thread_ = std::thread([this] { loop(); });
  return Status::ok();
}

void Supervisor::loop() {
  while (!stop_) {
    tick();
    std::this_thread::sleep_for(kTick);
  }
  // note: PR_SET_PDEATHSIG fires when the *thread* that forked a child exits; engines restarted by this
  // thread would be SIGKILLed the moment it returned, so it stops them (gracefully) before returning.
  stop_engines();
}

void Supervisor::stop_engines() {
  // Every group gets SIGTERM at once (engines drain in parallel), then the stragglers get SIGKILL.
  for (size_t i = 0; i < engines_.size(); ++i) {
    if (engines_[i].pid > 0) {
      publish(i, "stopping");
      kill(-engines_[i].pid, SIGTERM);
    }
  }
  auto until = Clock::now() + options_.stop_grace;
  for (size_t i = 0; i < engines_.size(); ++i) {
    Engine& e = engines_[i];
    if (e.pid <= 0) continue;
    while (Clock::now() < until && !try_reap(e.pid).has_value()) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    terminate_group(e.pid, std::chrono::milliseconds(0));
    e.pid = -1;
    e.state = State::kStopped;
    publish(i, "stopped");
  }
}

std::string Supervisor::engine_log_tail(size_t i) const {
  std::ifstream in(engines_[i].launch.log_file, std::ios::binary);
  if (!in) return "";
  in.seekg(0, std::ios::end);
  std::streamoff size = in.tellg();
  std::streamoff from = std::max<std::streamoff>(0, size - 4096);
  in.seekg(from);
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

void Supervisor::on_exit(size_t i, int wait_status) {
  Engine& e = engines_[i];
  auto now = Clock::now();
  bool was_stable = e.state == State::kRunning && now - e.started >= options_.stable_after;
  e.consecutive_failures = was_stable ? 1 : e.consecutive_failures + 1;
  auto delay = options_.backoff_initial * (1LL << std::min(e.consecutive_failures - 1, 20));
  delay = std::min<std::chrono::milliseconds>(delay, options_.backoff_cap);
  log::warn("engine {} (GPU {}, pid {}) exited: {}; restart in {} ms (log: {})", i, e.launch.gpu, e.pid,
            describe_wait_status(wait_status), delay.count(), e.launch.log_file.string());
  e.pid = -1;
  e.state = State::kBackoff;
  e.next_start = now + delay;
  publish(i, "restarting");
}

void Supervisor::recover_gpu(Gpu& g, const std::string& reason) {
  auto t0 = Clock::now();
  g.recoveries += 1;
  g.last_recovery_reason = reason;
  log::error("GPU {}: MPS shared-fate recovery #{}: {}", g.gpu, g.recoveries, reason);
  take_snapshot();
  // Out of rotation first, so the router holds or re-routes while the GPU is down.
  for (size_t i : g.engines) {
    engines_[i].state = State::kRecovering;
    publish(i, "recovering");
  }
  for (size_t i : g.engines) {
    Engine& e = engines_[i];
    if (e.pid > 0) terminate_group(e.pid, std::chrono::milliseconds(2'000));
    e.pid = -1;
    publish(i, "recovering");
  }
  Status st = g.daemon->stop(kMpsQuitTimeout);
  if (!st) log::warn("{}", st.message());
  g.daemon_up = false;
  take_snapshot();
  st = g.daemon->start();
  if (!st) {
    log::error("GPU {}: MPS daemon restart failed: {}; retrying on the next probe", g.gpu, st.message());
    g.next_probe = Clock::now() + options_.backoff_cap;
    return;
  }
  g.daemon_up = true;
  g.recent_exits.clear();
  const bool again_soon = g.recoveries > 1 && t0 - g.last_recovery_end < options_.stable_after;
  g.consecutive_recoveries = again_soon ? g.consecutive_recoveries + 1 : 0;
  auto delay = std::chrono::milliseconds(0);
  if (g.consecutive_recoveries > 0) {
    delay = std::min<std::chrono::milliseconds>(
        options_.backoff_initial * (1LL << std::min(g.consecutive_recoveries - 1, 20)), options_.backoff_cap);
    log::warn("GPU {}: {} recoveries in a row; engines restart in {} ms", g.gpu, g.consecutive_recoveries + 1,
              delay.count());
  }
  for (size_t i : g.engines) {
    Engine& e = engines_[i];
    e.restarts += 1;
    e.consecutive_failures = 0;
    if (delay.count() > 0) {
      e.state = State::kBackoff;
      e.next_start = Clock::now() + delay;
      publish(i, "restarting");
      continue;
    }
    Status s = spawn(i);
    if (!s) {
      log::error("engine {}: {}", i, s.message());
      e.state = State::kBackoff;
      e.next_start = Clock::now() + options_.backoff_initial;
    }
  }
  g.last_recovery_end = Clock::now();
  g.last_recovery_seconds = std::chrono::duration<double>(g.last_recovery_end - t0).count();
  g.next_probe = Clock::now() + options_.mps_probe_interval;
  log::info("GPU {}: recovery #{} done in {:.2f} s (daemon restarted, limits re-applied, {} engines restarting)", g.gpu,
            g.recoveries, g.last_recovery_seconds, g.engines.size());
}

void Supervisor::tick() {
  auto now = Clock::now();
  for (Gpu& g : gpus_) {
    std::string fault;
    // 1. Reap exits.
    for (size_t i : g.engines) {
      Engine& e = engines_[i];
      if (e.pid <= 0) continue;
      std::optional<int> status = try_reap(e.pid);
      if (!status) continue;
      // The group may hold children of a template's shell; clear it.
      kill(-e.pid, SIGKILL);
      if (g.daemon) {
        g.recent_exits.push_back(now);
        std::string tail = engine_log_tail(i);
        if (is_cuda_fault_text(tail)) fault = fmt::format("engine {} exited with a CUDA/MPS fault in its log", i);
      }
      on_exit(i, *status);
    }
    if (g.daemon) {
      // 2. Engines of one MPS server dying together share a fault.
      std::erase_if(g.recent_exits, [&](auto t) { return now - t > options_.shared_fate_window; });
      if (fault.empty() && g.recent_exits.size() >= 2 && g.engines.size() >= 2) {
        fault = fmt::format("{} engines exited within {} ms", g.recent_exits.size(), options_.shared_fate_window.count());
      }
      // 3. The daemon's logs.
      if (fault.empty() && g.daemon_up) {
        std::vector<std::string> lines = g.daemon->new_fault_lines();
        if (!lines.empty()) fault = "MPS log reports a fault: " + lines.front();
      }
      // 4. The control pipe.
      if (fault.empty() && now >= g.next_probe) {
        g.last_probe = g.daemon->probe();
        g.next_probe = Clock::now() + options_.mps_probe_interval;
        if (!g.last_probe.ok) {
          g.probe_failures += 1;
          fault = "MPS control daemon probe failed: " + g.last_probe.error;
        }
      }
      if (!fault.empty()) {
        recover_gpu(g, fault);
        continue;
      }
    }
    // 5. Restarts due, readiness, lasting ill health.
    for (size_t i : g.engines) {
      Engine& e = engines_[i];
      now = Clock::now();
      if (e.state == State::kBackoff && now >= e.next_start) {
        e.restarts += 1;
        Status s = spawn(i);
        if (!s) {
          log::error("engine {}: {}", i, s.message());
          e.next_start = now + options_.backoff_cap;
        }
      } else if (e.state == State::kStarting && now >= e.next_ready_probe) {
        e.next_ready_probe = now + kReadyProbeEvery;
        Result<router::HttpReply> r = router::http_get("127.0.0.1", e.launch.port, "/health", kReadyProbeTimeout);
        if (r.is_ok() && r->status == 200) {
          e.state = State::kRunning;
          publish(i, "running");
          log::info("engine {} (GPU {}, port {}): ready after {:.1f} s", i, e.launch.gpu, e.launch.port,
                    std::chrono::duration<double>(now - e.started).count());
        } else if (now - e.started > options_.ready_timeout) {
          log::error("engine {}: not ready within {} s; killing it", i, options_.ready_timeout.count() / 1000);
          kill(-e.pid, SIGKILL);  // reaped, and restarted with backoff, on a next tick
        }
      } else if (e.state == State::kRunning) {
        bool healthy = pool_.healthy(i);
        if (healthy) {
          e.unhealthy = false;
        } else if (!e.unhealthy) {
          e.unhealthy = true;
          e.unhealthy_since = now;
        } else if (now - e.unhealthy_since > options_.unhealthy_restart_after) {
          log::error("engine {}: failing health checks for {} s; restarting it", i,
                     options_.unhealthy_restart_after.count() / 1000);
          e.unhealthy = false;
          kill(-e.pid, SIGKILL);
        }
      }
    }
  }
  take_snapshot();
}

void Supervisor::take_snapshot() {
  std::vector<GpuSnapshot> snap;
  for (const Gpu& g : gpus_) {
    GpuSnapshot s;
    s.gpu = g.gpu;
    s.mps = g.daemon != nullptr;
    s.daemon_up = g.daemon_up;
    if (g.daemon) s.pipe_dir = g.daemon->options().pipe_dir.string();
    s.servers = g.last_probe.server_pids;
    s.default_active_thread_percentage = g.last_probe.default_active_thread_percentage;
    s.recoveries = g.recoveries;
    s.probe_failures = g.probe_failures;
    s.last_recovery_seconds = g.last_recovery_seconds;
    s.last_recovery_reason = g.last_recovery_reason;
    snap.push_back(std::move(s));
  }
  std::lock_guard lock(mu_);
  snapshot_ = std::move(snap);
}

std::string Supervisor::metrics_text() const {
  std::lock_guard lock(mu_);
  std::string out;
  if (snapshot_.empty() || !snapshot_.front().mps) {
    out += "# TYPE mpserve_mps_enabled gauge\nmpserve_mps_enabled 0\n";
    return out;
  }
  out += "# TYPE mpserve_mps_enabled gauge\nmpserve_mps_enabled 1\n";
  out += "# HELP mpserve_mps_daemon_up 1 when the GPU's MPS control daemon answers its control pipe\n";
  out += "# TYPE mpserve_mps_daemon_up gauge\n";
  for (const GpuSnapshot& g : snapshot_) out += fmt::format("mpserve_mps_daemon_up{{gpu=\"{}\"}} {}\n", g.gpu, g.daemon_up ? 1 : 0);
  out += "# HELP mpserve_mps_servers MPS server processes in get_server_list at the last probe\n";
  out += "# TYPE mpserve_mps_servers gauge\n";
  for (const GpuSnapshot& g : snapshot_) out += fmt::format("mpserve_mps_servers{{gpu=\"{}\"}} {}\n", g.gpu, g.servers.size());
  out += "# HELP mpserve_mps_recoveries_total shared-fate recoveries (all engines and the daemon restarted)\n";
  out += "# TYPE mpserve_mps_recoveries_total counter\n";
  for (const GpuSnapshot& g : snapshot_) out += fmt::format("mpserve_mps_recoveries_total{{gpu=\"{}\"}} {}\n", g.gpu, g.recoveries);
  out += "# TYPE mpserve_mps_probe_failures_total counter\n";
  for (const GpuSnapshot& g : snapshot_) {
    out += fmt::format("mpserve_mps_probe_failures_total{{gpu=\"{}\"}} {}\n", g.gpu, g.probe_failures);
  }
  out += "# TYPE mpserve_mps_last_recovery_seconds gauge\n";
  for (const GpuSnapshot& g : snapshot_) {
    out += fmt::format("mpserve_mps_last_recovery_seconds{{gpu=\"{}\"}} {:.3f}\n", g.gpu, g.last_recovery_seconds);
  }
  return out;
}

nlohmann::json Supervisor::health_json() const {
  std::lock_guard lock(mu_);
  nlohmann::json gpus = nlohmann::json::array();
  for (const GpuSnapshot& g : snapshot_) {
    nlohmann::json j{{"gpu", g.gpu}, {"mps", g.mps}};
    if (g.mps) {
      j["daemon_up"] = g.daemon_up;
      j["pipe_dir"] = g.pipe_dir;
      j["servers"] = g.servers;
      j["default_active_thread_percentage"] = g.default_active_thread_percentage;
      j["probe_failures"] = g.probe_failures;
      j["recoveries"] = g.recoveries;
      j["last_recovery_reason"] = g.last_recovery_reason;
    }
    gpus.push_back(j);
  }
  return {{"gpus", gpus}};
}

void Supervisor::shutdown() {
  if (shut_down_) return;
  shut_down_ = true;
  stop_ = true;
  if (thread_.joinable()) thread_.join();  // the loop stops the engines on its way out
  else stop_engines();
  for (Gpu& g : gpus_) {
    if (!g.daemon) continue;
    Status st = g.daemon->stop(kMpsQuitTimeout);
    if (!st) log::warn("{}", st.message());
    g.daemon_up = false;
    log::info("GPU {}: MPS control daemon stopped", g.gpu);
  }
  // Anything still carrying our mark (a grandchild that left its group) goes too.
  for (pid_t pid : processes_with_env(env::kSupervisorToken, options_.token)) {
    log::warn("killing leftover process {}", pid);
    kill(pid, SIGKILL);
  }
  take_snapshot();
}

}  // namespace mpserve::supervisor
