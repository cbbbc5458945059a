// Test-side helpers shared by tests/router and tests/supervisor: a blocking HTTP client with a
// deadline, child processes started for a test and killed with it, and /proc checks for leftovers.
#pragma once

#include <limits>
#include <signal.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

namespace mpserve::testing {

struct Reply {
  int status = 0;  // 0: transport failure
  std::string body;
  std::string error;
};

// One request on a fresh connection; reads the whole reply (chunked streams included).
inline Reply http_request(int port, const std::string& method, const std::string& target, const std::string& body = "",
                          int timeout_s = 60) {
  namespace beast = boost::beast;
  namespace http = beast::http;
  namespace net = boost::asio;
  Reply r;
  try {
    net::io_context ioc;
    net::ip::tcp::socket sock(ioc);
    sock.connect({net::ip::make_address("127.0.0.1"), static_cast<unsigned short>(port)});
    timeval tv{timeout_s, 0};
    setsockopt(sock.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(sock.native_handle(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    http::request<http::string_body> req{http::string_to_verb(method), target, 11};
    req.set(http::field::host, "127.0.0.1");
    req.set(http::field::content_type, "application/json");
    req.keep_alive(false);
    req.body() = body;
    req.prepare_payload();
    http::write(sock, req);
    beast::flat_buffer buf;
    http::response_parser<http::string_body> parser;
    parser.body_limit(std::numeric_limits<std::uint64_t>::max());  // Boost 1.74: none reads as exceeded
    beast::error_code ec;
    http::read(sock, buf, parser, ec);
    r.status = static_cast<int>(parser.get().result_int());
    r.body = parser.get().body();
    if (ec) {
      r.error = ec.message();
      if (!parser.is_header_done()) r.status = 0;
    }
  } catch (const std::exception& e) {
    r.status = 0;
    r.error = e.what();
  }
  return r;
}

inline Reply http_get(int port, const std::string& target) { return http_request(port, "GET", target, "", 10); }

// A child started for a test, killed (its whole group) when the object dies.
class Child {
 public:
  Child() = default;
  explicit Child(const std::vector<std::string>& argv, const std::string& log = "/dev/null") { start(argv, log); }
  ~Child() { kill_now(); }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  void start(const std::vector<std::string>& argv, const std::string& log) {
    pid_ = fork();
    if (pid_ == 0) {
      setpgid(0, 0);
      FILE* f = std::freopen(log.c_str(), "a", stdout);
      (void)f;
      dup2(STDOUT_FILENO, STDERR_FILENO);
      std::vector<char*> args;
      for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
      args.push_back(nullptr);
      execv(args[0], args.data());
      _exit(127);
    }
  }
  pid_t pid() const { return pid_; }
  void signal(int sig) const {
    if (pid_ > 0) ::kill(pid_, sig);
  }
  // Waits for exit; the exit code, 128+signal, or -1 on timeout.
  int wait(std::chrono::seconds timeout) {
    auto until = std::chrono::steady_clock::now() + timeout;
    while (pid_ > 0 && std::chrono::steady_clock::now() < until) {
      int st = 0;
      if (waitpid(pid_, &st, WNOHANG) == pid_) {
        pid_ = -1;
        return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return -1;
  }
  void kill_now() {
    if (pid_ <= 0) return;
    ::kill(-pid_, SIGKILL);
    ::kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }

 private:
  pid_t pid_ = -1;
};

inline bool alive(pid_t pid) {
  if (pid <= 0 || ::kill(pid, 0) != 0) return false;
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  std::getline(stat, line);
  size_t paren = line.rfind(')');
  return !(paren != std::string::npos && paren + 2 < line.size() && line[paren + 2] == 'Z');
}

// Live processes whose environment mentions `needle` (e.g. a test's runtime directory).
inline std::vector<pid_t> processes_mentioning(const std::string& needle) {
  std::vector<pid_t> out;
  for (const auto& e : std::filesystem::directory_iterator("/proc")) {
    std::string name = e.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    pid_t pid = std::stoi(name);
    if (pid == getpid()) continue;
    std::ifstream in(e.path() / "environ", std::ios::binary);
    std::string env((std::istreambuf_iterator<char>(in)), {});
    if (env.find(needle) != std::string::npos && alive(pid)) out.push_back(pid);
  }
  return out;
}

template <typename Pred>
bool wait_until(Pred pred, std::chrono::milliseconds timeout) {
  auto until = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < until) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return pred();
}

inline std::string read_text(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

// A fresh directory under the system temp dir, removed by the destructor.
class TempDir {
 public:
  explicit TempDir(const std::string& tag) {
    path_ = std::filesystem::temp_directory_path() /
            (tag + "-" + std::to_string(getpid()) + "-" + std::to_string(std::rand()));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

// Counts a streamed reply's SSE outcome.
struct StreamOutcome {
  bool done = false;   // saw data: [DONE]
  bool error = false;  // saw an event with "error"
  int events = 0;
};
inline StreamOutcome parse_stream(const std::string& body) {
  StreamOutcome o;
  size_t pos = 0;
  while ((pos = body.find("data: ", pos)) != std::string::npos) {
    size_t end = body.find("\n\n", pos);
    std::string data = body.substr(pos + 6, end == std::string::npos ? std::string::npos : end - pos - 6);
    if (data == "[DONE]") o.done = true;
    else if (data.find("\"error\"") != std::string::npos) o.error = true;
    else o.events++;
    if (end == std::string::npos) break;
    pos = end + 2;
  }
  return o;
}

}  // namespace mpserve::testing
