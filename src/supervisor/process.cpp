#include "supervisor/process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <map>
#include <thread>

#include "common/env.h"

extern char** environ;

namespace mpserve::supervisor {
namespace {

// Environment strings for execve: ours, with `set` overriding and `unset` removed.
std::vector<std::string> build_env(const std::vector<std::pair<std::string, std::string>>& set,
                                   const std::vector<std::string>& unset) {
  std::map<std::string, std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string kv(*e);
    size_t eq = kv.find('=');
    if (eq != std::string::npos) env[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  for (const auto& u : unset) env.erase(u);
  for (const auto& [k, v] : set) env[k] = v;
  std::vector<std::string> out;
  for (const auto& [k, v] : env) out.push_back(k + "=" + v);
  return out;
}

std::vector<char*> c_strings(std::vector<std::string>& strings) {
  std::vector<char*> out;
  for (auto& s : strings) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

// In the child, between fork and exec: async-signal-safe calls only (the parent has threads).
[[noreturn]] void exec_child(const char* path, char** argv, char** envp, int out_fd, int in_fd, bool die_with_parent,
                             pid_t parent) {
  setpgid(0, 0);
  if (die_with_parent) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);  // the parent died before prctl took effect
  }
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  for (int sig : {SIGTERM, SIGINT, SIGHUP, SIGPIPE, SIGCHLD}) signal(sig, SIG_DFL);
  if (in_fd >= 0) dup2(in_fd, STDIN_FILENO);
  if (out_fd >= 0) {
    dup2(out_fd, STDOUT_FILENO);
    dup2(out_fd, STDERR_FILENO);
  }
  // note: asio's sockets are not close-on-exec; without this a daemon started here would keep the
  // router's listening port open after the router exits. close_range(2) first, a loop on older kernels.
  if (syscall(SYS_close_range, 3u, ~0u, 0u) != 0) {
    for (int fd = 3; fd < 4096; ++fd) close(fd);
  }
  execve(path, argv, envp);
  _exit(127);
}

}  // namespace

std::optional<std::string> find_executable(const std::string& name) {
  if (name.find('/') != std::string::npos) {
    if (access(name.c_str(), X_OK) == 0) return std::filesystem::absolute(name).string();
    return std::nullopt;
  }
  std::string path = env::get_string(env::kPath, "/usr/local/bin:/usr/bin:/bin");
  size_t start = 0;
  while (start <= path.size()) {
    size_t end = path.find(':', start);
    if (end == std::string::npos) end = path.size();
    std::string dir = path.substr(start, end - start);
    if (!dir.empty()) {
      std::string candidate = dir + "/" + name;
      if (access(candidate.c_str(), X_OK) == 0) return candidate;
    }
    start = end + 1;
  }
  return std::nullopt;
}

Result<pid_t> spawn_process(const SpawnSpec& spec) {
  if (spec.argv.empty()) return Status::error("spawn: empty command");
  std::optional<std::string> exe = find_executable(spec.argv[0]);
  if (!exe) return Status::errorf("spawn: '{}' not found or not executable", spec.argv[0]);
  std::vector<std::string> args = spec.argv;
  std::vector<std::string> envs = build_env(spec.env_set, spec.env_unset);
  std::vector<char*> argv = c_strings(args);
  std::vector<char*> envp = c_strings(envs);

  int out_fd = -1;
  std::string log = spec.log_file.empty() ? std::string("/dev/null") : spec.log_file.string();
  out_fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (out_fd < 0) return Status::errorf("spawn: cannot open log {}: {}", log, strerror(errno));
  int in_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0) {
    ::close(out_fd);
    ::close(in_fd);
    return Status::errorf("spawn: fork: {}", strerror(errno));
  }
  if (pid == 0) exec_child(exe->c_str(), argv.data(), envp.data(), out_fd, in_fd, spec.die_with_parent, parent);
  // Set the group from both sides so a signal sent right after spawn reaches it.
  setpgid(pid, pid);
  ::close(out_fd);
  ::close(in_fd);
  return pid;
}

std::string describe_wait_status(int status) {
  if (WIFEXITED(status)) return "exit " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return "signal " + std::to_string(WTERMSIG(status)) + " (" + strsignal(WTERMSIG(status)) + ")";
  return "status " + std::to_string(status);
}

std::optional<int> try_reap(pid_t pid) {
  int status = 0;
  pid_t r = waitpid(pid, &status, WNOHANG);
  if (r == pid) return status;
  if (r < 0 && errno == ECHILD) return 0;  // already reaped elsewhere
  return std::nullopt;
}

bool process_alive(pid_t pid) {
  if (pid <= 0) return false;
  if (kill(pid, 0) != 0) return errno == EPERM;
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  std::getline(stat, line);
  size_t paren = line.rfind(')');
  if (paren != std::string::npos && paren + 2 < line.size()) return line[paren + 2] != 'Z' && line[paren + 2] != 'X';
  return true;
}

void terminate_group(pid_t pgid, std::chrono::milliseconds grace) {
  if (pgid <= 0) return;
  kill(-pgid, SIGTERM);
  auto until = std::chrono::steady_clock::now() + grace;
  while (std::chrono::steady_clock::now() < until) {
    if (try_reap(pgid).has_value() || !process_alive(pgid)) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  // The leader may be gone while children it made (a shell's, a vLLM worker) linger in the group.
  kill(-pgid, SIGKILL);
  for (int i = 0; i < 200 && !try_reap(pgid).has_value(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
}

Result<CommandOutput> run_command(const std::vector<std::string>& argv_in,
                                  const std::vector<std::pair<std::string, std::string>>& env_set,
                                  const std::string& stdin_text, std::chrono::milliseconds timeout) {
  if (argv_in.empty()) return Status::error("run_command: empty command");
  std::optional<std::string> exe = find_executable(argv_in[0]);
  if (!exe) return Status::errorf("'{}' not found or not executable", argv_in[0]);
  std::vector<std::string> args = argv_in;
  std::vector<std::string> envs = build_env(env_set, {});
  std::vector<char*> argv = c_strings(args);
  std::vector<char*> envp = c_strings(envs);

  int in_pipe[2], out_pipe[2];
  if (pipe2(in_pipe, O_CLOEXEC) != 0) return Status::errorf("pipe: {}", strerror(errno));
  if (pipe2(out_pipe, O_CLOEXEC) != 0) {
    ::close(in_pipe[0]);
    ::close(in_pipe[1]);
    return Status::errorf("pipe: {}", strerror(errno));
  }
  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0) return Status::errorf("fork: {}", strerror(errno));
  if (pid == 0) exec_child(exe->c_str(), argv.data(), envp.data(), out_pipe[1], in_pipe[0], true, parent);
  ::close(in_pipe[0]);
  ::close(out_pipe[1]);
  // Commands are a line or two: the pipe buffer holds them, so one write cannot block.
  if (!stdin_text.empty()) {
    ssize_t ignored = ::write(in_pipe[1], stdin_text.data(), stdin_text.size());
    (void)ignored;
  }
  ::close(in_pipe[1]);

  CommandOutput out;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  bool timed_out = false;
  bool exited = false;
  int status = 0;
  char buf[4096];
  // note: `-d` forks a daemon that may keep our pipe open, so the command's exit, not EOF, ends the
  // wait; what it wrote before exiting is still in the pipe and read after.
  fcntl(out_pipe[0], F_SETFL, O_NONBLOCK);
  for (;;) {
    pollfd p{out_pipe[0], POLLIN, 0};
    int r = poll(&p, 1, 20);
    if (r > 0) {
      ssize_t n = ::read(out_pipe[0], buf, sizeof(buf));
      if (n > 0) out.output.append(buf, static_cast<size_t>(n));
      if (n == 0) p.fd = -1;  // EOF; keep waiting for the exit
    }
    if (!exited && waitpid(pid, &status, WNOHANG) == pid) exited = true;
    if (exited) {
      ssize_t n;
      while ((n = ::read(out_pipe[0], buf, sizeof(buf))) > 0) out.output.append(buf, static_cast<size_t>(n));
      break;
    }
    if (std::chrono::steady_clock::now() > deadline) {
      timed_out = true;
      break;
    }
    if (r > 0 && (p.revents & POLLHUP) && !(p.revents & POLLIN)) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ::close(out_pipe[0]);
  if (timed_out) {
    kill(-pid, SIGKILL);
    waitpid(pid, &status, 0);
  }
  if (timed_out) return Status::errorf("'{}' did not finish within {} ms", argv_in[0], timeout.count());
  out.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
  return out;
}

std::vector<pid_t> processes_with_env(const std::string& key, const std::string& value) {
  std::vector<pid_t> out;
  std::string needle = key + "=" + value;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator("/proc", ec)) {
    std::string name = entry.path().filename().string();
    if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
    pid_t pid = static_cast<pid_t>(std::stol(name));
    if (pid == getpid()) continue;
    std::ifstream in(entry.path() / "environ", std::ios::binary);
    if (!in) continue;
    std::string item;
    while (std::getline(in, item, '\0')) {
      if (item == needle) {
        if (process_alive(pid)) out.push_back(pid);
        break;
      }
    }
  }
  return out;
}

}  // namespace mpserve::supervisor
