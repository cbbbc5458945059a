// Broken invariants and device faults abort loudly with file:line (STYLE.md: two error channels).
#pragma once

#include <cstdio>
#include <cstdlib>

#include <fmt/format.h>

namespace mpserve::detail {
[[noreturn]] inline void check_failed(const char* expr, const char* file, int line, const std::string& msg) {
  std::fprintf(stderr, "mpserve: CHECK failed: %s at %s:%d%s%s\n", expr, file, line, msg.empty() ? "" : ": ",
               msg.c_str());
  std::fflush(stderr);
  std::abort();
}
}  // namespace mpserve::detail

#define MPS_CHECK(cond)                                                                 \
  do {                                                                                  \
    if (!(cond)) ::mpserve::detail::check_failed(#cond, __FILE__, __LINE__, std::string()); \
  } while (0)

#define MPS_CHECK_MSG(cond, ...)                                                                  \
  do {                                                                                            \
    if (!(cond)) ::mpserve::detail::check_failed(#cond, __FILE__, __LINE__, fmt::format(__VA_ARGS__)); \
  } while (0)
