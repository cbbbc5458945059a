// `mpserve serve`'s supervisor: per GPU one MPS control daemon (when MPS is on) and N engine
// processes; restarts engines with exponential backoff, detects MPS shared-fate faults and recovers the
// whole GPU, and leaves nothing running when it stops.
#pragma once

#include <atomic>
#include <chrono>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/status.h"
#include "router/engine_pool.h"
#include "supervisor/engine_launch.h"
#include "supervisor/mps_daemon.h"

namespace mpserve::supervisor {

struct SupervisorOptions {
  std::vector<int> gpus{0};
  int engines_per_gpu = 1;
  bool mps = false;
  std::string mps_control_bin = "nvidia-cuda-mps-control";
  bool mps_remove_stale = false;
  std::filesystem::path runtime_dir;
  // Empty: `<self_exe> engine --port {port} ...`. Else a template run by /bin/sh with placeholders
  // {port} {gpu} {model} {memory_fraction} {index} {host}.
  std::string engine_cmd;
  std::string self_exe;
  std::string model;       // passed as --model / {model}
  std::string device = "cpu";
  std::string engine_args;  // appended to the default command
  // One value for every engine, or one per engine slot on a GPU.
  std::vector<int> sm_percent;
  std::string engine_mem_limit;  // e.g. 20G; empty = none
  double memory_fraction = 0;    // 0 = an equal share of 0.9 per GPU
  std::string token;             // cleanup mark put into every child's environment

  std::chrono::milliseconds backoff_initial{500};
  std::chrono::milliseconds backoff_cap{10'000};
  // A run this long resets the backoff.
  std::chrono::milliseconds stable_after{30'000};
  std::chrono::milliseconds ready_timeout{180'000};
  // Engines of one GPU that exit within this window share a fault (MPS on).
  std::chrono::milliseconds shared_fate_window{3'000};
  std::chrono::milliseconds mps_probe_interval{2'000};
  // A running engine failing health checks this long is restarted.
  std::chrono::milliseconds unhealthy_restart_after{15'000};
  std::chrono::milliseconds stop_grace{10'000};
};

class Supervisor {
 public:
  Supervisor(SupervisorOptions options, router::EnginePool& pool);
  ~Supervisor();

  // Works out ports, command lines and environments and registers the engines with the pool; starts nothing.
  Status prepare();
  // The MPS daemons this supervisor will run (for the crash guardian), valid after prepare().
  std::vector<MpsDaemonOptions> daemon_options() const;
  // Starts the daemons and engines and the supervision thread.
  Status start();
  // Stops engines (SIGTERM to each group, SIGKILL after the grace), quits the daemons, sweeps leftovers.
  void shutdown();
  // Set when supervision cannot go on (an MPS daemon that will not start again).
  bool failed() const { return failed_; }

  std::string metrics_text() const;
  nlohmann::json health_json() const;

 private:
  enum class State { kStopped, kStarting, kRunning, kBackoff, kRecovering };
  struct Engine {
    EngineLaunch launch;
    State state = State::kStopped;
    int pid = -1;
    int restarts = 0;
    int consecutive_failures = 0;
    std::chrono::steady_clock::time_point started, next_start, unhealthy_since, next_ready_probe;
    bool unhealthy = false;
  };
  struct Gpu {
    int gpu = 0;
    std::unique_ptr<MpsDaemon> daemon;
    std::vector<size_t> engines;
    std::vector<std::chrono::steady_clock::time_point> recent_exits;
    std::chrono::steady_clock::time_point next_probe;
    MpsProbe last_probe;
    uint64_t recoveries = 0;
    uint64_t probe_failures = 0;
    double last_recovery_seconds = 0;
    std::string last_recovery_reason;
    bool daemon_up = false;
    // Recoveries that followed the previous one within stable_after: engines that fault again
    // right after a recovery (a bad model, an unsupported shape) restart with exponential backoff
    // instead of cycling the daemon in a tight loop.
    int consecutive_recoveries = 0;
    std::chrono::steady_clock::time_point last_recovery_end;
  };

  // What /health and /metrics show of a GPU; copied from Gpu by the loop thread under mu_.
  struct GpuSnapshot {
    int gpu = 0;
    bool mps = false;
    bool daemon_up = false;
    std::string pipe_dir;
    std::vector<std::string> servers;
    std::string default_active_thread_percentage;
    uint64_t recoveries = 0;
    uint64_t probe_failures = 0;
    double last_recovery_seconds = 0;
    std::string last_recovery_reason;
  };
  void take_snapshot();
  void loop();
  void stop_engines();
  void tick();
  Status spawn(size_t i);
  void on_exit(size_t i, int wait_status);
  void recover_gpu(Gpu& g, const std::string& reason);
  std::string engine_log_tail(size_t i) const;
  void publish(size_t i, const char* state);

  SupervisorOptions options_;
  router::EnginePool& pool_;
  // engines_ and gpus_ belong to the loop thread (and to start/shutdown, before and after it runs).
  std::vector<Engine> engines_;
  std::vector<Gpu> gpus_;
  mutable std::mutex mu_;
  std::vector<GpuSnapshot> snapshot_;  // guarded by mu_
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> failed_{false};
  bool shut_down_ = false;
};

}  // namespace mpserve::supervisor
