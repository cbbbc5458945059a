// One MPS control daemon for one GPU, with private pipe and log directories. Talks to it the way an
// operator does: `nvidia-cuda-mps-control -d` to start, one command per invocation on stdin after.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/status.h"

namespace mpserve::supervisor {

struct MpsDaemonOptions {
  int gpu = 0;
  std::filesystem::path pipe_dir;
  std::filesystem::path log_dir;
  std::string control_bin = "nvidia-cuda-mps-control";
  // Added to the daemon's environment (the supervisor's cleanup mark).
  std::vector<std::pair<std::string, std::string>> extra_env;
  // Remove a stale pid file / control socket left by a daemon that died, instead of refusing to start.
  bool remove_stale = false;
  std::chrono::milliseconds command_timeout{5'000};
  std::chrono::milliseconds start_timeout{10'000};
  // set_default_active_thread_percentage, applied after every start; 0 = leave the daemon's default.
  int default_active_thread_percentage = 0;
  // set_default_device_pinned_mem_limit 0 <value>, after every start; empty = none.
  std::string default_pinned_mem_limit;
};

// What one probe through the control pipe found.
struct MpsProbe {
  bool ok = false;
  std::vector<std::string> server_pids;  // get_server_list
  std::string default_active_thread_percentage;
  std::string error;
};

class MpsDaemon {
 public:
  explicit MpsDaemon(MpsDaemonOptions options) : options_(std::move(options)) {}

  // Refuses (with the reason) when a live daemon already serves the pipe directory, or when a stale
  // pid file or socket is there and remove_stale is off. Then starts the daemon with only this GPU
  // visible, waits until it answers, and applies the default limits.
  Status start();
  // `quit`, then waits for our MPS processes of this pipe directory to exit; SIGKILL after the timeout.
  // A no-op when none of them is ours.
  Status stop(std::chrono::milliseconds timeout);

  // One control command (e.g. "get_server_list"); its output, trimmed.
  Result<std::string> command(const std::string& line);
  MpsProbe probe();
  // Lines added to control.log / server.log since the last call that say a client faulted.
  std::vector<std::string> new_fault_lines();

  // Control daemon and server processes using this pipe directory.
  std::vector<pid_t> daemon_pids() const;
  std::vector<pid_t> all_mps_pids() const;
  // Those of all_mps_pids() that carry this supervisor's mark (extra_env): only these are ever stopped,
  // so a daemon someone else runs on the same directory is never touched.
  std::vector<pid_t> owned_pids() const;
  const MpsDaemonOptions& options() const { return options_; }
  // The environment an MPS client of this daemon needs.
  std::vector<std::pair<std::string, std::string>> client_env() const;

 private:
  std::vector<std::pair<std::string, std::string>> control_env() const;
  Status preflight();
  void clear_pipe_dir();

  MpsDaemonOptions options_;
  std::map<std::string, uintmax_t> log_offsets_;
};

// The pid file the control daemon writes into its pipe directory.
inline constexpr const char* kMpsPidFileName = "nvidia-cuda-mps-control.pid";

}  // namespace mpserve::supervisor
