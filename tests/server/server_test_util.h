// Starts the real `mpserve engine` on a free loopback port and talks raw HTTP to it (Beast).
#pragma once

#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <map>
#include <optional>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

namespace mpserve::testing {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;

inline std::string mpserve_bin() {
  const char* b = std::getenv("MPSERVE_BIN");
  return b ? b : "mpserve";
}

// One `mpserve engine --port 0` child process. stderr goes to the test's stderr.
class ServerProcess {
 public:
  explicit ServerProcess(std::vector<std::string> extra_args = {}, int max_model_len = 256) {
    int fds[2];
    if (pipe(fds) != 0) return;
    pid_ = fork();
    if (pid_ == 0) {
      dup2(fds[1], 1);
      close(fds[0]);
      close(fds[1]);
      std::vector<std::string> args = {mpserve_bin(), "engine", "--port", "0", "--max-num-seqs", "8",
                                       "--max-model-len", std::to_string(max_model_len)};
      args.insert(args.end(), extra_args.begin(), extra_args.end());
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
    close(fds[1]);
    out_fd_ = fds[0];
    wait_ready(std::chrono::seconds(60));
  }
  ~ServerProcess() {
    if (pid_ > 0 && !reaped_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    if (out_fd_ >= 0) close(out_fd_);
  }
  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;

  bool ready() const { return port_ != 0; }
  uint16_t port() const { return port_; }
  pid_t pid() const { return pid_; }
  const std::string& ready_line() const { return ready_line_; }

  // Sends `sig` and waits for the exit; returns the exit code (128 + signal if killed).
  int signal_and_wait(int sig, std::chrono::seconds timeout) {
    kill(pid_, sig);
    auto deadline = std::chrono::steady_clock::now() + timeout;
    int status = 0;
    while (std::chrono::steady_clock::now() < deadline) {
      pid_t r = waitpid(pid_, &status, WNOHANG);
      if (r == pid_) {
        reaped_ = true;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return -1;
  }

 private:
  void wait_ready(std::chrono::seconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    std::string buf;
    std::regex re(R"(ready url=http://127\.0\.0\.1:(\d+))");
    while (std::chrono::steady_clock::now() < deadline) {
      pollfd p{out_fd_, POLLIN, 0};
      if (poll(&p, 1, 100) <= 0) continue;
      char tmp[4096];
      ssize_t n = read(out_fd_, tmp, sizeof(tmp));
      if (n <= 0) return;
      buf.append(tmp, static_cast<size_t>(n));
      std::smatch m;
      if (std::regex_search(buf, m, re)) {
        port_ = static_cast<uint16_t>(std::stoi(m[1]));
        ready_line_ = buf.substr(0, buf.find('\n'));
        return;
      }
    }
  }

  pid_t pid_ = -1;
  int out_fd_ = -1;
  bool reaped_ = false;
  uint16_t port_ = 0;
  std::string ready_line_;
};

struct HttpResult {
  int status = 0;
  std::string body;
  std::map<std::string, std::string> headers;
};

// One request on a fresh connection. `raw` overrides the whole request text when set.
inline HttpResult http_call(uint16_t port, const std::string& method, const std::string& target,
                            const std::string& body = "", const std::string& content_type = "application/json") {
  net::io_context ioc;
  beast::tcp_stream stream(ioc);
  stream.expires_after(std::chrono::seconds(60));
  stream.connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), port));
  http::request<http::string_body> req(http::string_to_verb(method), target, 11);
  req.set(http::field::host, "127.0.0.1");
  if (!body.empty() || method == "POST") {
    req.set(http::field::content_type, content_type);
    req.body() = body;
    req.prepare_payload();
  }
  http::write(stream, req);
  beast::flat_buffer buffer;
  http::response_parser<http::string_body> parser;
  parser.body_limit(64 << 20);
  http::read(stream, buffer, parser);
  HttpResult r;
  auto& res = parser.get();
  r.status = static_cast<int>(res.result_int());
  r.body = res.body();
  for (const auto& f : res) r.headers[std::string(f.name_string())] = std::string(f.value());
  beast::error_code ec;
  stream.socket().shutdown(tcp::socket::shutdown_both, ec);
  return r;
}

inline HttpResult get(uint16_t port, const std::string& target) { return http_call(port, "GET", target); }
inline HttpResult post(uint16_t port, const std::string& target, const std::string& body) {
  return http_call(port, "POST", target, body);
}

// Reads an SSE body into its `data:` payloads.
inline std::vector<std::string> sse_events(const std::string& body) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos < body.size()) {
    size_t end = body.find("\n\n", pos);
    if (end == std::string::npos) end = body.size();
    std::string ev = body.substr(pos, end - pos);
    if (ev.rfind("data: ", 0) == 0) out.push_back(ev.substr(6));
    pos = end + 2;
  }
  return out;
}

// Parses Prometheus text into name{labels} -> value (sample lines only).
inline std::map<std::string, double> parse_metrics(const std::string& text) {
  std::map<std::string, double> out;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(pos, end - pos);
    pos = end + 1;
    if (line.empty() || line[0] == '#') continue;
    size_t sp = line.rfind(' ');
    if (sp == std::string::npos) continue;
    out[line.substr(0, sp)] = std::stod(line.substr(sp + 1));
  }
  return out;
}

// The value of the first sample whose key starts with `prefix` (a name, or name{labels...).
inline double metric(const std::map<std::string, double>& m, const std::string& prefix) {
  for (const auto& [k, v] : m) {
    if (k.rfind(prefix, 0) == 0) return v;
  }
  return -1;
}

}  // namespace mpserve::testing
