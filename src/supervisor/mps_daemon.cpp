#include "supervisor/mps_daemon.h"

#include <signal.h>

#include <algorithm>
#include <fstream>
#include <sstream>
#include <thread>

#include "common/env.h"
#include "common/log.h"
#include "supervisor/process.h"

namespace mpserve::supervisor {
namespace fs = std::filesystem;
namespace {

std::string trim(std::string s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
  size_t i = 0;
  while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) ++i;
  return s.substr(i);
}

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

std::string cmdline_of(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/cmdline", std::ios::binary);
  std::string s((std::istreambuf_iterator<char>(in)), {});
  std::replace(s.begin(), s.end(), '\0', ' ');
  return s;
}

std::optional<pid_t> read_pid_file(const fs::path& p) {
  std::ifstream in(p);
  long pid = 0;
  if (in >> pid && pid > 0) return static_cast<pid_t>(pid);
  return std::nullopt;
}

// note: what the MPS server and control daemon write when a client hits a fatal GPU fault differs between
// driver versions; these words cover the ones seen ("fatal", "exception", Xid reports, illegal address).
bool is_fault_line(const std::string& line) {
  std::string l = lower(line);
  for (const char* word : {"fatal", "exception", "xid", "illegal"}) {
    if (l.find(word) != std::string::npos) return true;
  }
  return false;
}

}  // namespace

std::vector<std::pair<std::string, std::string>> MpsDaemon::client_env() const {
  return {{env::kMpsPipeDir, options_.pipe_dir.string()}, {env::kMpsLogDir, options_.log_dir.string()}};
}

std::vector<std::pair<std::string, std::string>> MpsDaemon::control_env() const {
  auto e = client_env();
  for (const auto& kv : options_.extra_env) e.push_back(kv);
  return e;
}

std::vector<pid_t> MpsDaemon::all_mps_pids() const {
  std::vector<pid_t> out;
  for (pid_t pid : processes_with_env(env::kMpsPipeDir, options_.pipe_dir.string())) {
    // note: engines carry the same pipe directory (and "mpserve" contains "mps"): match MPS binaries only.
    std::string cmd = cmdline_of(pid);
    if (cmd.find("cuda-mps") != std::string::npos || cmd.find("mps_control") != std::string::npos) out.push_back(pid);
  }
  return out;
}

std::vector<pid_t> MpsDaemon::owned_pids() const {
  std::vector<pid_t> all = all_mps_pids();
  if (options_.extra_env.empty()) return all;
  std::vector<pid_t> marked = processes_with_env(options_.extra_env.front().first, options_.extra_env.front().second);
  std::vector<pid_t> out;
  for (pid_t p : all) {
    if (std::find(marked.begin(), marked.end(), p) != marked.end()) out.push_back(p);
  }
  return out;
}

std::vector<pid_t> MpsDaemon::daemon_pids() const {
  std::vector<pid_t> out;
  for (pid_t pid : all_mps_pids()) {
    std::string cmd = cmdline_of(pid);
    if (cmd.find("mps-control") != std::string::npos || cmd.find("mps_control") != std::string::npos) out.push_back(pid);
  }
  return out;
}

Status MpsDaemon::preflight() {
  const fs::path pid_file = options_.pipe_dir / kMpsPidFileName;
  std::vector<pid_t> live = daemon_pids();
  std::optional<pid_t> recorded = read_pid_file(pid_file);
  if (recorded && process_alive(*recorded)) live.push_back(*recorded);
  if (!live.empty()) {
    return Status::errorf(
        "GPU {}: an MPS control daemon (pid {}) already serves pipe directory {}; not starting a second one. "
        "Stop it with: echo quit | CUDA_MPS_PIPE_DIRECTORY={} {}",
        options_.gpu, live.front(), options_.pipe_dir.string(), options_.pipe_dir.string(), options_.control_bin);
  }
  std::error_code ec;
  bool stale_pid = fs::exists(pid_file, ec);
  bool stale_socket = fs::exists(options_.pipe_dir / "control", ec);
  if (stale_pid || stale_socket) {
    std::string what = stale_pid ? fmt::format("pid file {} (pid {} is not running)", pid_file.string(),
                                               recorded ? std::to_string(*recorded) : std::string("unreadable"))
                                 : fmt::format("control socket {} with no daemon behind it",
                                               (options_.pipe_dir / "control").string());
    if (!options_.remove_stale) {
      return Status::errorf("GPU {}: stale MPS state: {}. Remove it, or pass --mps-remove-stale", options_.gpu, what);
    }
    log::warn("GPU {}: removing stale MPS state: {}", options_.gpu, what);
    for (const auto& entry : fs::directory_iterator(options_.pipe_dir, ec)) fs::remove_all(entry.path(), ec);
  }
  return Status::ok();
}

Status MpsDaemon::start() {
  std::error_code ec;
  fs::create_directories(options_.pipe_dir, ec);
  fs::create_directories(options_.log_dir, ec);
  if (ec) return Status::errorf("GPU {}: cannot create MPS directories under {}: {}", options_.gpu,
                                options_.pipe_dir.parent_path().string(), ec.message());
  MPS_RETURN_IF_ERROR(preflight());

  auto env = control_env();
  env.emplace_back(env::kCudaVisibleDevices, std::to_string(options_.gpu));
  Result<CommandOutput> r = run_command({options_.control_bin, "-d"}, env, "", options_.command_timeout);
  if (!r) return r.status().with_context(fmt::format("GPU {}: starting the MPS control daemon", options_.gpu));
  if (r->exit_code != 0) {
    return Status::errorf("GPU {}: `{} -d` exited {}: {}", options_.gpu, options_.control_bin, r->exit_code,
                          trim(r->output));
  }
  auto until = std::chrono::steady_clock::now() + options_.start_timeout;
  MpsProbe p;
  for (;;) {
    p = probe();
    if (p.ok) break;
    if (std::chrono::steady_clock::now() > until) {
      return Status::errorf("GPU {}: MPS control daemon did not answer within {} ms: {}", options_.gpu,
                            options_.start_timeout.count(), p.error);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (options_.default_active_thread_percentage > 0) {
    Result<std::string> s =
        command(fmt::format("set_default_active_thread_percentage {}", options_.default_active_thread_percentage));
    if (!s) return s.status().with_context(fmt::format("GPU {}", options_.gpu));
  }
  if (!options_.default_pinned_mem_limit.empty()) {
    Result<std::string> s = command("set_default_device_pinned_mem_limit 0 " + options_.default_pinned_mem_limit);
    if (!s) return s.status().with_context(fmt::format("GPU {}", options_.gpu));
  }
  // Faults before this start belong to the previous daemon.
  new_fault_lines();
  std::vector<pid_t> pids = daemon_pids();
  log::info("GPU {}: MPS control daemon up (pid {}, pipe {}, log {})", options_.gpu,
            pids.empty() ? -1 : pids.front(), options_.pipe_dir.string(), options_.log_dir.string());
  return Status::ok();
}

Result<std::string> MpsDaemon::command(const std::string& line) {
  Result<CommandOutput> r = run_command({options_.control_bin}, control_env(), line + "\n", options_.command_timeout);
  if (!r) return r.status();
  std::string out = trim(r->output);
  if (r->exit_code != 0) return Status::errorf("`{}` exited {}: {}", line, r->exit_code, out);
  // note: the control client prints an error and may still exit 0 when it finds no daemon.
  std::string l = lower(out);
  if (l.find("cannot find") != std::string::npos || l.find("not running") != std::string::npos ||
      l.find("connection refused") != std::string::npos) {
    return Status::errorf("`{}`: {}", line, out);
  }
  return out;
}

MpsProbe MpsDaemon::probe() {
  MpsProbe p;
  if (daemon_pids().empty()) {
    p.error = "no MPS control daemon process on pipe directory " + options_.pipe_dir.string();
    return p;
  }
  Result<std::string> servers = command("get_server_list");
  if (!servers) {
    p.error = servers.error();
    return p;
  }
  std::istringstream in(*servers);
  std::string pid;
  while (in >> pid) p.server_pids.push_back(pid);
  Result<std::string> pct = command("get_default_active_thread_percentage");
  if (!pct) {
    p.error = pct.error();
    return p;
  }
  p.default_active_thread_percentage = *pct;
  p.ok = true;
  return p;
}

std::vector<std::string> MpsDaemon::new_fault_lines() {
  std::vector<std::string> faults;
  for (const char* name : {"control.log", "server.log"}) {
    fs::path path = options_.log_dir / name;
    std::ifstream in(path, std::ios::binary);
    if (!in) continue;
    in.seekg(0, std::ios::end);
    uintmax_t size = static_cast<uintmax_t>(in.tellg());
    uintmax_t& offset = log_offsets_[name];
    if (size < offset) offset = 0;  // rotated or truncated
    in.seekg(static_cast<std::streamoff>(offset));
    std::string line;
    while (std::getline(in, line)) {
      if (in.eof()) break;  // an unfinished last line: read it whole next time
      offset += line.size() + 1;
      if (is_fault_line(line)) faults.push_back(std::string(name) + ": " + line);
    }
  }
  return faults;
}

void MpsDaemon::clear_pipe_dir() {
  // note: our daemon is gone; what it left (socket, pid file) would read as stale state on the next start.
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(options_.pipe_dir, ec)) fs::remove_all(entry.path(), ec);
}

Status MpsDaemon::stop(std::chrono::milliseconds timeout) {
  if (owned_pids().empty()) return Status::ok();
  Result<std::string> q = command("quit");
  if (!q) log::warn("GPU {}: MPS quit: {}", options_.gpu, q.error());
  auto until = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < until) {
    if (owned_pids().empty()) {
      clear_pipe_dir();
      return Status::ok();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  std::vector<pid_t> left = owned_pids();
  for (pid_t pid : left) kill(pid, SIGKILL);
  for (int i = 0; i < 100 && !owned_pids().empty(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  clear_pipe_dir();
  return Status::errorf("GPU {}: MPS daemon did not quit within {} ms; killed {} process(es)", options_.gpu,
                        timeout.count(), left.size());
}

}  // namespace mpserve::supervisor
