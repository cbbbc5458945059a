// A small blocking HTTP GET with a deadline, for health probes from plain threads (health checker,
// supervisor readiness) where an io_context would be more machinery than the job needs.
#pragma once

#include <chrono>
#include <string>

#include "common/status.h"

namespace mpserve::router {

struct HttpReply {
  int status = 0;
  std::string body;
};

Result<HttpReply> http_get(const std::string& host, int port, const std::string& target,
                           std::chrono::milliseconds timeout);

}  // namespace mpserve::router
