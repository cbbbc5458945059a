#include "study/serve_process.h"

#include <signal.h>
#include <sys/wait.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "router/http_get.h"
#include "supervisor/process.h"

namespace mpserve::study {
namespace {

using Clock = std::chrono::steady_clock;
constexpr std::chrono::milliseconds kStopGrace{60000};

std::string read_text(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

}  // namespace

std::string tail_of_file(const std::filesystem::path& path, int max_lines) {
  std::string text = read_text(path);
  size_t pos = text.size();
  for (int i = 0; i <= max_lines && pos > 0; ++i) {
    size_t nl = text.rfind('\n', pos - 1);
    if (nl == std::string::npos) {
      pos = 0;
      break;
    }
    pos = i < max_lines ? nl : nl + 1;
  }
  return text.substr(pos);
}

Status ServeProcess::start(const ServeSpec& spec) {
  spec_ = spec;
  supervisor::SpawnSpec s;
  s.argv = spec.argv;
  for (const char* a : {"--port", "0", "--runtime-dir"}) s.argv.push_back(a);
  s.argv.push_back(spec.runtime_dir.string());
  s.log_file = spec.log_file;
  s.die_with_parent = true;
  // The log is appended to across resumed runs: only what this start writes is searched.
  std::error_code ec;
  log_start_ = std::filesystem::exists(spec.log_file) ? std::filesystem::file_size(spec.log_file, ec) : 0;
  auto pid = supervisor::spawn_process(s);
  if (!pid) return pid.status();
  pid_ = *pid;
  exit_.clear();

  auto fail = [&](const std::string& why) {
    std::string how = stop();
    return Status::errorf("mpserve serve {}{}; last lines of {}:\n{}", why, how.empty() ? "" : " (" + how + ")",
                          spec.log_file.string(), tail_of_file(spec.log_file, 15));
  };
  const auto deadline = Clock::now() + std::chrono::milliseconds(static_cast<int64_t>(spec.ready_timeout_s * 1000));
  const std::regex listening("listening on http://[0-9.]+:([0-9]+)");
  while (port_ == 0) {
    std::smatch m;
    std::string text = read_text(spec.log_file);
    text.erase(0, std::min(log_start_, text.size()));
    if (std::regex_search(text, m, listening)) {
      port_ = std::stoi(m[1]);
      break;
    }
    if (!exited().empty()) return fail("exited before listening");
    if (Clock::now() > deadline) return fail("did not listen in time");
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  for (;;) {
    auto r = router::http_get("127.0.0.1", port_, "/health", std::chrono::milliseconds(5000));
    if (r && r->status == 200) {
      auto j = nlohmann::json::parse(r->body, nullptr, false);
      if (j.is_object() && j.value("engines_available", 0) >= spec.engines) return Status::ok();
    }
    if (!exited().empty()) return fail("exited before its engines were ready");
    if (Clock::now() > deadline) {
      return fail(fmt::format("engines not all ready within {} s", spec.ready_timeout_s));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
}

std::string ServeProcess::exited() const {
  if (pid_ <= 0) return exit_.empty() ? "not started" : exit_;
  if (!exit_.empty()) return exit_;
  if (auto st = supervisor::try_reap(pid_)) exit_ = supervisor::describe_wait_status(*st);
  return exit_;
}

std::string ServeProcess::stop() {
  if (pid_ <= 0) return "";
  if (exited().empty()) {
    ::kill(-pid_, SIGTERM);
    const auto until = Clock::now() + kStopGrace;
    while (exited().empty() && Clock::now() < until) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    if (exited().empty()) {
      ::kill(-pid_, SIGKILL);
      int st = 0;
      ::waitpid(pid_, &st, 0);
      exit_ = supervisor::describe_wait_status(st) + " after SIGKILL";
    }
  }
  ::kill(-pid_, SIGKILL);  // whatever its group left behind (engines lead their own groups and die with it)
  pid_ = -1;
  port_ = 0;
  return exit_;
}

std::vector<std::string> ServeProcess::log_problems() const {
  std::vector<std::string> out;
  std::string text = read_text(spec_.log_file);
  text.erase(0, std::min(log_start_, text.size()));
  std::stringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.find(" error] ") != std::string::npos || line.find(" warn] ") != std::string::npos) out.push_back(line);
  }
  return out;
}

}  // namespace mpserve::study
