// `mpserve router`: the router alone, in front of engines something else started.
#include <signal.h>

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "common/log.h"
#include "router/engine_pool.h"
#include "router/router.h"

namespace mpserve::cli {
namespace {

struct RouterFlags {
  std::vector<std::string> engines;
  std::string host = "127.0.0.1";
  int port = 8000;
  std::string policy = "least-requests";
  int threads = 2;
  double hold_timeout_s = 30;
  double drain_timeout_s = 30;
};

int run_router(const RouterFlags& f) {
  auto kind = router::parse_policy(f.policy);
  if (!kind) {
    std::fprintf(stderr, "mpserve router: %s\n", kind.error().c_str());
    return 2;
  }
  router::EnginePool pool;
  for (const std::string& url : f.engines) {
    auto a = router::parse_engine_url(url);
    if (!a) {
      std::fprintf(stderr, "mpserve router: %s\n", a.error().c_str());
      return 2;
    }
    pool.add(*a);
  }
  // Threads started below inherit this mask; the signals are taken with sigwait.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  router::RouterOptions ro;
  ro.host = f.host;
  ro.port = f.port;
  ro.threads = f.threads;
  ro.hold_timeout = std::chrono::milliseconds(static_cast<int64_t>(f.hold_timeout_s * 1000));
  router::Router r(ro, pool, *kind);
  Status st = r.start();
  if (!st) {
    std::fprintf(stderr, "mpserve router: %s\n", st.message().c_str());
    return 1;
  }
  std::printf("mpserve router: listening on http://%s:%d\n", f.host.c_str(), r.port());
  std::fflush(stdout);
  int sig = 0;
  sigwait(&signals, &sig);
  log::info("router: signal {}; draining", sig);
  r.drain(std::chrono::milliseconds(static_cast<int64_t>(f.drain_timeout_s * 1000)));
  r.stop();
  return 0;
}

}  // namespace

void add_router_command(CLI::App& app) {
  auto f = std::make_shared<RouterFlags>();
  CLI::App* cmd = app.add_subcommand("router", "the router alone, in front of running OpenAI-compatible engines");
  cmd->add_option("--engine", f->engines, "engine base URL, e.g. http://127.0.0.1:8001 (repeat)")->required();
  cmd->add_option("--host", f->host, "listen address")->capture_default_str();
  cmd->add_option("--port", f->port, "listen port (0 = any free port)")->check(CLI::Range(0, 65535))->capture_default_str();
  cmd->add_option("--policy", f->policy, "round-robin | least-requests | least-tokens | prefix-affinity")
      ->capture_default_str();
  cmd->add_option("--threads", f->threads, "I/O threads")->check(CLI::Range(1, 64))->capture_default_str();
  cmd->add_option("--hold-timeout", f->hold_timeout_s, "seconds a request waits while no engine is available")
      ->check(CLI::Range(0.0, 3600.0))->capture_default_str();
  cmd->add_option("--drain-timeout", f->drain_timeout_s, "seconds to let requests in flight finish on shutdown")
      ->check(CLI::Range(0.0, 3600.0))->capture_default_str();
  cmd->callback([f] { exit_code() = run_router(*f); });
}

}  // namespace mpserve::cli
