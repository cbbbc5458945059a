#include "server/engine_server.h"

#include <fmt/format.h>

#include <random>
#include <string_view>

#include "common/log.h"

namespace mpserve::server {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_between(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

std::string_view path_of(const std::string& target) {
  std::string_view t(target);
  return t.substr(0, t.find('?'));
}

ApiError api_error(int status, std::string message, std::string type, std::string code = "") {
  ApiError e;
  e.status = status;
  e.message = std::move(message);
  e.type = std::move(type);
  e.code = std::move(code);
  return e;
}

constexpr const char* kJson = "application/json";

}  // namespace

// One HTTP request's engine requests (one per choice) and what they produced so far. Touched
// only on its connection's strand.
struct EngineServer::Pending : std::enable_shared_from_this<Pending> {
  struct Choice {
    uint64_t engine_id = 0;
    bool submitted = false;
    bool finished = false;
    std::optional<Clock::time_point> first_token;
    ChoiceResult result;
  };

  EngineServer* server = nullptr;
  engine::EngineLoop* loop = nullptr;
  std::shared_ptr<Exchange> ex;
  Endpoint endpoint = Endpoint::kCompletions;
  bool stream = false;
  bool include_usage = false;
  int n = 1;
  std::string id;
  std::string model;
  int64_t created = 0;
  Clock::time_point arrival;
  std::vector<Choice> choices;
  int unfinished = 0;
  // The response is complete, failed, or its client left: nothing more is written.
  bool done = false;

  void abort_unfinished() {
    for (auto& c : choices) {
      if (c.submitted && !c.finished) loop->abort(c.engine_id);
    }
  }

  void fail(const ApiError& e) {
    if (done) return;
    done = true;
    abort_unfinished();
    if (stream) {
      ex->write(stream_error_event(e));
      ex->write(std::string(kStreamDone));
      ex->end_stream();
    } else {
      server->send_error(*ex, e);
    }
  }

  void on_output(size_t i, const engine::RequestOutput& o) {
    Choice& c = choices[i];
    if (c.finished) return;
    auto now = Clock::now();
    ServerMetrics& m = server->metrics();
    if (!o.new_tokens.empty() && !c.first_token) {
      c.first_token = now;
      m.time_to_first_token.observe(seconds_between(arrival, now));
    }
    c.result.completion_tokens = o.completion_tokens;
    if (i % static_cast<size_t>(n) == 0) c.result.prompt_tokens = o.prompt_tokens;
    if (!stream) c.result.text += o.new_text;
    if (o.finished) {
      c.finished = true;
      --unfinished;
      c.result.finish_reason = engine::finish_reason_name(o.finish_reason);
      m.count_finished(c.result.finish_reason);
      m.e2e_request_latency.observe(seconds_between(arrival, now));
      if (c.first_token && o.completion_tokens > 1) {
        m.time_per_output_token.observe(seconds_between(*c.first_token, now) / (o.completion_tokens - 1));
      }
    }
    if (done) return;
    if (o.finished && o.finish_reason == engine::FinishReason::kAborted) {
      // Our own aborts set `done` first, so this one came from the drain deadline.
      return fail(api_error(503, "the server is shutting down and stopped this request before it finished",
                            "service_unavailable_error"));
    }
    if (stream && (!o.new_text.empty() || o.finished)) {
      const std::string& reason = o.finished ? c.result.finish_reason : std::string();
      int index = static_cast<int>(i);
      ex->write(endpoint == Endpoint::kChat ? chat_chunk(id, created, model, index, o.new_text, reason, false)
                                            : completion_chunk(id, created, model, index, o.new_text, reason));
    }
    if (unfinished == 0) finish();
  }

  void finish() {
    done = true;
    std::vector<ChoiceResult> results;
    for (auto& c : choices) results.push_back(std::move(c.result));
    if (!stream) {
      ex->respond(200, kJson, endpoint == Endpoint::kChat ? chat_response(id, created, model, results)
                                                           : completion_response(id, created, model, results));
      return;
    }
    if (include_usage) {
      Usage u;
      for (const auto& r : results) {
        u.prompt_tokens += r.prompt_tokens;
        u.completion_tokens += r.completion_tokens;
      }
      ex->write(usage_chunk(endpoint, id, created, model, u));
    }
    ex->write(std::string(kStreamDone));
    ex->end_stream();
  }
};

EngineServer::EngineServer(EngineServerOptions opts)
    : opts_(std::move(opts)), metrics_(std::make_unique<ServerMetrics>(opts_.model_name)) {
  std::random_device rd;
  seed_base_ = (static_cast<uint64_t>(rd()) << 32) ^ rd();
  created_ = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

EngineServer::~EngineServer() = default;

void EngineServer::attach(engine::EngineLoop* loop, const tokenizer::Tokenizer* tok) {
  tok_ = tok;
  limits_.max_model_len = loop->options().backend.max_model_len;
  limits_.vocab_size = static_cast<int32_t>(
      std::min<int64_t>(loop->backend().config().vocab_size, static_cast<int64_t>(tok->vocab_size())));
  loop_.store(loop, std::memory_order_release);
}

void EngineServer::begin_drain() { draining_.store(true); }

void EngineServer::send_error(Exchange& ex, const ApiError& e, const Headers& extra) {
  ex.respond(e.status, kJson, error_body(e), extra);
}

void EngineServer::handle(HttpRequest req, std::shared_ptr<Exchange> ex) {
  std::string_view path = path_of(req.target);
  bool get = req.method == "GET", post = req.method == "POST";
  auto method_not_allowed = [&](const char* allow) {
    send_error(*ex,
               api_error(405, fmt::format("method {} is not allowed on {}; use {}", req.method, path, allow),
                         "invalid_request_error"),
               {{"Allow", allow}});
  };
  engine::EngineLoop* loop = loop_.load(std::memory_order_acquire);

  if (path == "/health") {
    if (!get) return method_not_allowed("GET");
    if (draining_.load()) return ex->respond(503, kJson, R"({"status":"draining"})");
    if (!loop) return ex->respond(503, kJson, R"({"status":"loading"})");
    return ex->respond(200, kJson, R"({"status":"ok"})");
  }
  if (path == "/metrics") {
    if (!get) return method_not_allowed("GET");
    return ex->respond(200, "text/plain; version=0.0.4; charset=utf-8",
                       metrics_->render(loop ? loop->stats() : engine::EngineStats{}));
  }
  if (path == "/v1/models") {
    if (!get) return method_not_allowed("GET");
    int32_t max_len = loop ? limits_.max_model_len : 0;
    return ex->respond(200, kJson, models_response(opts_.model_name, created_, max_len));
  }
  if (path == "/v1/completions" || path == "/v1/chat/completions") {
    if (!post) return method_not_allowed("POST");
    // note: `path` views req.target, so the endpoint is decided before req is moved.
    Endpoint endpoint = path == "/v1/completions" ? Endpoint::kCompletions : Endpoint::kChat;
    return handle_generation(endpoint, std::move(req), std::move(ex));
  }
  send_error(*ex, api_error(404, fmt::format("no route for {} {}", req.method, path), "not_found_error"));
}

void EngineServer::handle_generation(Endpoint endpoint, HttpRequest req, std::shared_ptr<Exchange> ex) {
  engine::EngineLoop* loop = loop_.load(std::memory_order_acquire);
  if (draining_.load() || !loop) {
    return send_error(*ex,
                      api_error(503, draining_.load() ? "the server is shutting down" : "the model is still loading",
                                "service_unavailable_error"),
                      {{"Retry-After", "1"}});
  }
  auto parsed = parse_request(endpoint, req.body, limits_);
  if (auto* e = std::get_if<ApiError>(&parsed)) return send_error(*ex, *e);
  ParsedRequest& pr = std::get<ParsedRequest>(parsed);
  if (!pr.model.empty() && pr.model != opts_.model_name) {
    return send_error(*ex, api_error(404,
                                     fmt::format("The model `{}` does not exist. This server serves `{}`.", pr.model,
                                                 opts_.model_name),
                                     "invalid_request_error", "model_not_found"));
  }
  uint64_t seq = next_id_.fetch_add(1);
  auto built = build_generation_requests(pr, *tok_, limits_, seed_base_ + seq * 1000003ull);
  if (auto* e = std::get_if<ApiError>(&built)) return send_error(*ex, *e);
  auto& gens = std::get<std::vector<engine::GenerationRequest>>(built);

  auto p = std::make_shared<Pending>();
  p->server = this;
  p->loop = loop;
  p->ex = ex;
  p->endpoint = endpoint;
  p->stream = pr.stream;
  p->include_usage = pr.include_usage;
  p->n = pr.n;
  p->id = fmt::format("{}-{:016x}{:08x}", endpoint == Endpoint::kChat ? "chatcmpl" : "cmpl", seed_base_, seq);
  p->model = opts_.model_name;
  p->created =
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  p->arrival = req.arrival;
  p->choices.resize(gens.size());
  p->unfinished = static_cast<int>(gens.size());

  metrics_->http_in_flight.fetch_add(1);
  // note: the in-flight gauge drops when the last reference to the request goes away, i.e.
  // when every choice has finished in the engine and the response is written or abandoned.
  std::shared_ptr<void> in_flight(nullptr, [m = metrics_.get()](void*) { m->http_in_flight.fetch_sub(1); });

  for (size_t i = 0; i < gens.size(); ++i) {
    // The callback runs on the engine thread: it records the step time and hops to the strand.
    auto cb = [this, p, i, in_flight](const engine::RequestOutput& o) {
      on_engine_output(o);
      p->ex->post([p, i, o] { p->on_output(i, o); });
    };
    Result<uint64_t> id = loop->submit(std::move(gens[i]), std::move(cb));
    if (!id) {
      const std::string& msg = id.error();
      p->done = true;
      p->abort_unfinished();
      // note: the engine reports why it refused only as text; these prefixes are its contract.
      if (msg.rfind("engine overloaded", 0) == 0) {
        return send_error(*ex, api_error(429, msg, "rate_limit_error", "overloaded"), {{"Retry-After", "1"}});
      }
      if (msg.find("shutting down") != std::string::npos) {
        return send_error(*ex, api_error(503, msg, "service_unavailable_error"), {{"Retry-After", "1"}});
      }
      return send_error(*ex, api_error(400, msg, "invalid_request_error"));
    }
    p->choices[i].engine_id = *id;
    p->choices[i].submitted = true;
  }

  ex->on_disconnect([p] {
    if (p->done) return;
    p->done = true;
    p->abort_unfinished();
  });
  if (p->stream) {
    ex->start_stream(200, "text/event-stream");
    if (endpoint == Endpoint::kChat) {
      for (size_t i = 0; i < p->choices.size(); ++i) {
        ex->write(chat_chunk(p->id, p->created, p->model, static_cast<int>(i), "", "", true));
      }
    }
  }
}

void EngineServer::on_engine_output(const engine::RequestOutput&) {
  // note: runs on the engine thread between steps. The loop's stats are refreshed after each
  // step's outputs are delivered, so this sees the previous step's duration, once per step
  // that produced any output (steps of pure chunked prefill are not observed).
  engine::EngineLoop* loop = loop_.load(std::memory_order_relaxed);
  engine::EngineStats s = loop->stats();
  if (s.steps != last_observed_step_ && s.steps > 0) {
    last_observed_step_ = s.steps;
    metrics_->step_duration.observe(s.last_step_ms / 1000.0);
  }
}

}  // namespace mpserve::server
