#include "common/log.h"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <string>

#include "common/env.h"

namespace mpserve::log {
namespace {

Level level_from_env() {
  std::string v = env::get_string(env::kLogLevel, "info");
  if (v == "debug") return Level::kDebug;
  if (v == "warn") return Level::kWarn;
  if (v == "error") return Level::kError;
  if (v == "off") return Level::kOff;
  return Level::kInfo;
}

std::atomic<int>& current() {
  static std::atomic<int> lvl{static_cast<int>(level_from_env())};
  return lvl;
}

}  // namespace

Level level() { return static_cast<Level>(current().load(std::memory_order_relaxed)); }
void set_level(Level l) { current().store(static_cast<int>(l)); }

void write(Level l, std::string_view message) {
  static std::mutex mu;
  static const char* kNames[] = {"debug", "info", "warn", "error", "off"};
  auto now = std::chrono::system_clock::now();
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count();
  std::lock_guard<std::mutex> lock(mu);
  std::fprintf(stderr, "[%lld.%03lld %s] %.*s\n", static_cast<long long>(ms / 1000), static_cast<long long>(ms % 1000),
               kNames[static_cast<int>(l)], static_cast<int>(message.size()), message.data());
}

}  // namespace mpserve::log
