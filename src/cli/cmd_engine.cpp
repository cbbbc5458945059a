// `mpserve engine`: one engine process with its OpenAI-compatible HTTP server.
#include <pthread.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>

#include "cli/commands.h"
#include "cli/engine_flags.h"
#include "engine/engine_loop.h"
#include "server/engine_server.h"
#include "server/http_server.h"

namespace mpserve::cli {
namespace {

struct EngineCmdFlags {
  EngineFlags engine;
  std::string host = "127.0.0.1";
  int port = 8000;
  std::string served_model_name;
  int http_threads = 2;
  double drain_timeout_s = 30;
};

int fail(const std::string& msg) {
  std::fprintf(stderr, "mpserve engine: %s\n", msg.c_str());
  return 1;
}

int run_engine(const EngineCmdFlags& f) {
  // SIGINT/SIGTERM are blocked in every thread (threads inherit the mask) and taken by the
  // main thread with sigwait, so shutdown runs as ordinary code, not in a signal handler.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  auto model_dir = resolve_model_dir(f.engine.model_dir);
  if (!model_dir) return fail(model_dir.error());
  std::string name = f.served_model_name;
  if (name.empty()) {
    auto p = model_dir->lexically_normal();
    name = (p.has_filename() ? p.filename() : p.parent_path().filename()).string();
  }

  server::EngineServer api({name});
  server::HttpServerOptions ho;
  ho.host = f.host;
  ho.port = static_cast<uint16_t>(f.port);
  ho.threads = f.http_threads;
  server::HttpServer http(ho, [&api](server::HttpRequest req, std::shared_ptr<server::Exchange> ex) {
    api.handle(std::move(req), std::move(ex));
  });
  http.set_response_observer([&api](int status) { api.metrics().count_response(status); });
  // Listening before the model loads lets /health say 503 (loading) meanwhile.
  if (Status st = http.start(); !st) return fail(st.message());

  EngineFlags ef = f.engine;
  ef.model_dir = model_dir->string();
  auto loaded = load_engine(ef);
  if (!loaded) return fail(loaded.error());
  LoadedEngine le = std::move(*loaded);
  auto loop = std::make_unique<engine::EngineLoop>(std::move(le.engine));
  api.attach(loop.get(), le.tokenizer.get());

  std::printf("mpserve engine: ready url=http://%s:%u model=%s device=%s max_model_len=%d\n", f.host.c_str(),
              static_cast<unsigned>(http.port()), name.c_str(), std::string(loop->backend().name()).c_str(),
              loop->options().backend.max_model_len);
  std::fflush(stdout);

  int sig = 0;
  sigwait(&signals, &sig);
  std::fprintf(stderr, "mpserve engine: %s: draining (up to %.0f s)\n", sig == SIGINT ? "SIGINT" : "SIGTERM",
               f.drain_timeout_s);
  api.begin_drain();
  http.stop_accepting();
  auto deadline = std::chrono::steady_clock::now() +
                  std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                      std::chrono::duration<double>(f.drain_timeout_s));
  loop->drain_and_stop(deadline);
  // The engine is done; give the connections a moment to write their last bytes.
  auto flush_deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (http.active_exchanges() > 0 && std::chrono::steady_clock::now() < flush_deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  http.stop();
  std::fprintf(stderr, "mpserve engine: stopped\n");
  return 0;
}

}  // namespace

void add_engine_command(CLI::App& app) {
  auto f = std::make_shared<EngineCmdFlags>();
  CLI::App* cmd = app.add_subcommand("engine", "one engine with its OpenAI-compatible HTTP server");
  add_engine_flags(cmd, &f->engine);
  cmd->add_option("--host", f->host, "address to listen on")->capture_default_str();
  cmd->add_option("--port", f->port, "TCP port (0 = any free port; the ready line names it)")
      ->check(CLI::Range(0, 65535))
      ->capture_default_str();
  cmd->add_option("--served-model-name", f->served_model_name,
                  "model name clients use (default: the model directory's name)");
  cmd->add_option("--http-threads", f->http_threads, "HTTP I/O threads (JSON, templates, tokenization)")
      ->check(CLI::Range(1, 256))
      ->capture_default_str();
  cmd->add_option("--drain-timeout", f->drain_timeout_s,
                  "on SIGTERM/SIGINT, seconds to let in-flight requests finish before aborting them")
      ->check(CLI::Range(0.0, 3600.0))
      ->capture_default_str();
  cmd->callback([f] { exit_code() = run_engine(*f); });
}

}  // namespace mpserve::cli
