// Runs `mpserve serve` as a child process for a test and reads its state over HTTP.
#pragma once

#include <regex>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "fakes/test_http.h"

namespace mpserve::testing {

inline std::string mpserve_bin() {
  const char* b = std::getenv("MPSERVE_BIN");
  return b ? b : "mpserve";
}

class Serve {
 public:
  Serve(const std::filesystem::path& runtime_dir, std::vector<std::string> args) : runtime_dir_(runtime_dir) {
    log_ = runtime_dir.string() + ".serve.log";
    std::vector<std::string> argv{mpserve_bin(), "serve", "--port", "0", "--runtime-dir", runtime_dir.string()};
    argv.insert(argv.end(), args.begin(), args.end());
    child_.start(argv, log_);
  }
  ~Serve() { std::filesystem::remove(log_); }

  // The router's port, from the "listening on" line; 0 when serve exited first.
  int wait_listening(std::chrono::seconds timeout) {
    std::regex re("listening on http://[0-9.]+:([0-9]+)");
    int port = 0;
    wait_until(
        [&] {
          std::smatch m;
          std::string text = read_text(log_);
          if (std::regex_search(text, m, re)) port = std::stoi(m[1]);
          return port != 0 || !alive(child_.pid());
        },
        timeout);
    port_ = port;
    return port;
  }
  bool wait_available(size_t n, std::chrono::seconds timeout) {
    return wait_until(
        [&] {
          auto r = http_get(port_, "/health");
          if (r.status != 200) return false;
          auto j = nlohmann::json::parse(r.body, nullptr, false);
          return j.is_object() && j.value("engines_available", 0u) == n;
        },
        timeout);
  }
  nlohmann::json engines() const { return nlohmann::json::parse(http_get(port_, "/admin/engines").body)["engines"]; }
  std::vector<pid_t> engine_pids() const {
    std::vector<pid_t> out;
    for (const auto& e : engines()) out.push_back(e["pid"].get<int>());
    return out;
  }
  std::string log() const { return read_text(log_); }
  Child& child() { return child_; }
  int port() const { return port_; }

 private:
  std::filesystem::path runtime_dir_;
  std::string log_;
  Child child_;
  int port_ = 0;
};

}  // namespace mpserve::testing
