#include "common/env.h"

#include <cstdlib>

namespace mpserve::env {

std::optional<std::string> get(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return std::nullopt;
  return std::string(v);
}

std::string get_string(const char* name, const std::string& fallback) { return get(name).value_or(fallback); }

}  // namespace mpserve::env
