// Child processes for the supervisor: spawn into their own process group with a parent-death signal,
// output to a log file, reap, signal whole groups; run a short command and capture its output.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/status.h"

namespace mpserve::supervisor {

struct SpawnSpec {
  std::vector<std::string> argv;  // argv[0] is looked up on PATH when it has no '/'
  std::vector<std::pair<std::string, std::string>> env_set;
  std::vector<std::string> env_unset;
  std::filesystem::path log_file;  // stdout and stderr, appended; empty = /dev/null
  // Engines die with the supervisor (PR_SET_PDEATHSIG); a daemon that must outlive its launcher does not.
  bool die_with_parent = true;
};

// Forks and execs; the child leads its own process group (pgid == pid).
Result<pid_t> spawn_process(const SpawnSpec& spec);

// Exit of a reaped child, as a shell would print it ("exit 1", "signal 9 (Killed)").
std::string describe_wait_status(int status);

// Reaps `pid` if it exited: the wait status, or nullopt while it runs.
std::optional<int> try_reap(pid_t pid);

// SIGTERM to the group, up to `grace` for the leader to exit, then SIGKILL to the group; reaps the leader.
void terminate_group(pid_t pgid, std::chrono::milliseconds grace);

// True for a live process (a zombie counts as gone).
bool process_alive(pid_t pid);

struct CommandOutput {
  int exit_code = -1;  // 128 + signal when killed
  std::string output;  // stdout and stderr together
};

// Runs argv with `stdin_text` on its stdin and the given environment changes; kills it after `timeout`.
Result<CommandOutput> run_command(const std::vector<std::string>& argv,
                                  const std::vector<std::pair<std::string, std::string>>& env_set,
                                  const std::string& stdin_text, std::chrono::milliseconds timeout);

// The absolute path of `name` on $PATH (or `name` itself when it contains '/' and exists).
std::optional<std::string> find_executable(const std::string& name);

// Processes whose environment holds `key=value` (same user only: /proc/<pid>/environ).
std::vector<pid_t> processes_with_env(const std::string& key, const std::string& value);

}  // namespace mpserve::supervisor
