// The engine's OpenAI-compatible API: routes, request handling on HTTP threads (JSON,
// templating, tokenization), hand-off of native requests to the EngineLoop, SSE streaming,
// aborts when clients leave, and the readiness/drain state behind /health.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <string>

#include "engine/engine_loop.h"
#include "server/http_server.h"
#include "server/metrics.h"
#include "server/openai_protocol.h"
#include "tokenizer/tokenizer.h"

namespace mpserve::server {

struct EngineServerOptions {
  std::string model_name;  // what /v1/models lists and requests must name
};

class EngineServer {
 public:
  explicit EngineServer(EngineServerOptions opts);
  ~EngineServer();

  // The HTTP handler (runs on the connection's strand).
  void handle(HttpRequest req, std::shared_ptr<Exchange> ex);
  // The engine is loaded: generation routes and /health go live. Both must outlive the server.
  void attach(engine::EngineLoop* loop, const tokenizer::Tokenizer* tok);
  // Shutting down: /health answers 503 and new generation requests are refused with 503.
  void begin_drain();
  ServerMetrics& metrics() { return *metrics_; }

  // Internal: one request in flight (public so the .cpp's helpers can name it).
  struct Pending;

 private:
  void handle_generation(Endpoint endpoint, HttpRequest req, std::shared_ptr<Exchange> ex);
  void send_error(Exchange& ex, const ApiError& e, const Headers& extra = {});
  void on_engine_output(const engine::RequestOutput& o);

  EngineServerOptions opts_;
  std::unique_ptr<ServerMetrics> metrics_;
  std::atomic<engine::EngineLoop*> loop_{nullptr};
  const tokenizer::Tokenizer* tok_ = nullptr;  // set before loop_ (release/acquire)
  ProtocolLimits limits_;                      // set before loop_
  std::atomic<bool> draining_{false};
  std::atomic<uint64_t> next_id_{1};
  uint64_t seed_base_ = 0;
  int64_t created_ = 0;
  // Engine thread only: the step count when a step duration was last observed.
  int64_t last_observed_step_ = -1;
};

}  // namespace mpserve::server
