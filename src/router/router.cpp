#include "router/router.h"

#include <limits>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include "common/log.h"
#include "router/http_get.h"
#include "router/request_info.h"

namespace mpserve::router {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
using net::awaitable;
using net::ip::tcp;
using Request = http::request<http::string_body>;

namespace {

constexpr size_t kMaxRequestBodyBytes = 64u << 20;
constexpr auto kClientIdleTimeout = std::chrono::seconds(300);

std::string error_body(const std::string& message, const std::string& type, int code) {
  return nlohmann::json{{"error", {{"message", message}, {"type", type}, {"code", code}}}}.dump();
}

// The SSE event that ends a stream the engine broke off: OpenAI clients raise on a chunk with "error".
std::string stream_error_event(const std::string& message) {
  return "data: " + error_body(message, "engine_error", 502) + "\n\n";
}

bool ends_event(const std::string& tail) { return tail.size() >= 2 && tail.compare(tail.size() - 2, 2, "\n\n") == 0; }

}  // namespace

struct Router::Impl {
  explicit Impl(int threads) : ioc(threads), acceptor(ioc) {}
  net::io_context ioc;
  tcp::acceptor acceptor;
  std::atomic<bool> accepting{true};
};

Router::Router(RouterOptions options, EnginePool& pool, PolicyKind policy)
    : options_(std::move(options)), pool_(pool), policy_(policy), impl_(std::make_unique<Impl>(options_.threads)) {}

Router::~Router() { stop(); }

namespace {

// One client connection: reads requests, answers the router's own endpoints, proxies the rest.
class Session {
 public:
  Session(tcp::socket socket, EnginePool& pool, Policy& policy, const RouterOptions& options,
          const std::function<std::string()>& metrics_hook, const std::function<nlohmann::json()>& health_hook)
      : client_(std::move(socket)),
        pool_(pool),
        policy_(policy),
        options_(options),
        metrics_hook_(metrics_hook),
        health_hook_(health_hook) {}

  awaitable<void> run() {
    beast::flat_buffer buffer;
    for (;;) {
      http::request_parser<http::string_body> parser;
      parser.body_limit(kMaxRequestBodyBytes);
      client_.expires_after(kClientIdleTimeout);
      beast::error_code ec;
      co_await http::async_read(client_, buffer, parser, net::redirect_error(net::use_awaitable, ec));
      if (ec) break;
      client_.expires_never();
      Request req = parser.release();
      bool keep_alive = req.keep_alive();
      bool connection_ok = co_await dispatch(req);
      if (!connection_ok || !keep_alive) break;
    }
    beast::error_code ignored;
    client_.socket().shutdown(tcp::socket::shutdown_send, ignored);
  }

 private:
  awaitable<bool> dispatch(const Request& req) {
    std::string target(req.target());
    std::string path = target.substr(0, target.find('?'));
    if (req.method() == http::verb::get && path == "/health") {
      size_t up = pool_.available_count();
      nlohmann::json body{{"status", up > 0 ? "ok" : "unavailable"},
                          {"engines_available", up},
                          {"engines_total", pool_.size()},
                          {"policy", policy_name(policy_.kind())}};
      if (health_hook_) body.update(health_hook_());
      co_return co_await reply(req, up > 0 ? http::status::ok : http::status::service_unavailable, body.dump(),
                               "application/json");
    }
    if (req.method() == http::verb::get && path == "/metrics") {
      std::string text = pool_.metrics_text();
      if (metrics_hook_) text += metrics_hook_();
      co_return co_await reply(req, http::status::ok, text, "text/plain; version=0.0.4");
    }
    if (req.method() == http::verb::get && path == "/admin/engines") {
      nlohmann::json body = pool_.admin_json();
      body["policy"] = policy_name(policy_.kind());
      co_return co_await reply(req, http::status::ok, body.dump(2), "application/json");
    }
    if (req.method() == http::verb::post && (path == "/v1/completions" || path == "/v1/chat/completions")) {
      co_return co_await proxy(req, path == "/v1/chat/completions");
    }
    if (req.method() == http::verb::get && path == "/v1/models") co_return co_await proxy(req, false);
    co_return co_await reply(req, http::status::not_found,
                             error_body("no route for " + std::string(req.method_string()) + " " + path,
                                        "invalid_request_error", 404),
                             "application/json");
  }

  awaitable<bool> reply(const Request& req, http::status status, std::string body, const std::string& content_type) {
    http::response<http::string_body> res{status, req.version()};
    res.set(http::field::content_type, content_type);
    res.keep_alive(req.keep_alive());
    res.body() = std::move(body);
    res.prepare_payload();
    beast::error_code ec;
    co_await http::async_write(client_, res, net::redirect_error(net::use_awaitable, ec));
    co_return !ec;
  }

  // What one attempt on one engine came to.
  enum class Attempt { kDone, kRetry, kClientGone };

  awaitable<bool> proxy(const Request& req, bool chat) {
    RequestInfo info;
    if (req.method() == http::verb::post) {
      Result<RequestInfo> parsed = parse_request_info(req.body(), chat);
      if (!parsed) {
        co_return co_await reply(req, http::status::bad_request,
                                 error_body(parsed.error(), "invalid_request_error", 400), "application/json");
      }
      info = std::move(parsed).value();
    }
    auto deadline = std::chrono::steady_clock::now() + options_.hold_timeout;
    std::vector<size_t> tried;
    std::string last_error = "no engine available";
    int attempts = 0;
    net::steady_timer timer(co_await net::this_coro::executor);
    while (attempts < options_.max_attempts) {
      std::optional<Lease> lease = pool_.acquire(policy_, info.prompt_prefix, info.work_tokens(), tried);
      if (!lease) {
        // Every engine is out (restart, MPS recovery) or already failed this request: hold it a while.
        if (std::chrono::steady_clock::now() >= deadline) break;
        if (!tried.empty() && pool_.available_count() > 0) tried.clear();  // the failed ones may be back
        timer.expires_after(std::chrono::milliseconds(50));
        beast::error_code ec;
        co_await timer.async_wait(net::redirect_error(net::use_awaitable, ec));
        continue;
      }
      ++attempts;
      if (attempts > 1) pool_.count_retry();
      Attempt a = co_await attempt(req, info, *lease, &last_error);
      if (a == Attempt::kDone) co_return true;
      if (a == Attempt::kClientGone) co_return false;
      tried.push_back(lease->engine);
      log::warn("router: {} failed before any byte reached the client ({}); retrying elsewhere",
                lease->address.url(), last_error);
    }
    co_return co_await reply(req, http::status::service_unavailable,
                             error_body("no engine could serve the request: " + last_error, "service_unavailable", 503),
                             "application/json");
  }

  // Sends the request to one engine and relays its answer. Returns kRetry only while no byte has
  // reached the client; after that every failure is reported to the client in-band.
  awaitable<Attempt> attempt(const Request& req, const RequestInfo& info, const Lease& lease, std::string* error) {
    auto executor = co_await net::this_coro::executor;
    beast::tcp_stream up(executor);
    beast::error_code ec;
    auto fail_before = [&](const std::string& what) {
      *error = lease.address.url() + ": " + what;
      pool_.release(lease, Outcome::kFailedBeforeBytes);
      return Attempt::kRetry;
    };

    tcp::resolver resolver(executor);
    auto endpoints = co_await resolver.async_resolve(lease.address.host, std::to_string(lease.address.port),
                                                     net::redirect_error(net::use_awaitable, ec));
    if (ec) co_return fail_before("resolve: " + ec.message());
    up.expires_after(options_.connect_timeout);
    co_await up.async_connect(endpoints, net::redirect_error(net::use_awaitable, ec));
    if (ec) {
      pool_.mark_unreachable(lease.engine);
      co_return fail_before("connect: " + ec.message());
    }

    Request out = req;
    out.set(http::field::host, lease.address.host + ":" + std::to_string(lease.address.port));
    out.keep_alive(false);
    out.prepare_payload();
    up.expires_after(options_.read_timeout);
    co_await http::async_write(up, out, net::redirect_error(net::use_awaitable, ec));
    if (ec) {
      pool_.mark_unreachable(lease.engine);
      co_return fail_before("send: " + ec.message());
    }

    beast::flat_buffer up_buffer;
    http::response_parser<http::buffer_body> parser;
    // note: Boost 1.74 compares the length against an empty optional as "exceeded", so the
    // unlimited body is spelled as the largest limit instead of boost::none.
    parser.body_limit(std::numeric_limits<std::uint64_t>::max());
    co_await http::async_read_header(up, up_buffer, parser, net::redirect_error(net::use_awaitable, ec));
    if (ec) {
      pool_.mark_unreachable(lease.engine);
      co_return fail_before("reading response header: " + ec.message());
    }
    const auto& head = parser.get();
    // An overloaded or draining engine says 503: another engine may take the request.
    if (head.result() == http::status::service_unavailable) co_return fail_before("engine answered 503");

    std::string content_type(head[http::field::content_type]);
    bool streaming = info.stream || content_type.find("text/event-stream") != std::string::npos;
    http::status status = head.result();

    char chunk[16384];
    std::string body;         // non-streaming: the whole body, sent once complete
    std::string stream_tail;  // streaming: last bytes forwarded, to find event boundaries and [DONE]
    bool header_sent = false;
    bool saw_done = false;
    http::response<http::empty_body> client_head{status, req.version()};
    client_head.set(http::field::content_type, content_type.empty() ? "application/json" : content_type);
    client_head.set(http::field::cache_control, "no-cache");
    client_head.keep_alive(req.keep_alive());
    client_head.chunked(true);

    while (!parser.is_done()) {
      parser.get().body().data = chunk;
      parser.get().body().size = sizeof(chunk);
      up.expires_after(options_.read_timeout);
      // note: read_some, not read: read would wait to fill the 16 KiB chunk buffer, holding back
      // (and batching) the events of a stream instead of forwarding each as it arrives.
      co_await http::async_read_some(up, up_buffer, parser, net::redirect_error(net::use_awaitable, ec));
      if (ec == http::error::need_buffer) ec = {};
      size_t n = sizeof(chunk) - parser.get().body().size;
      if (ec) {
        if (!header_sent) {
          pool_.mark_unreachable(lease.engine);
          co_return fail_before("reading response body: " + ec.message());
        }
        co_return co_await end_stream_with_error(lease, stream_tail, "engine " + lease.address.url() +
                                                                     " failed mid-stream: " + ec.message());
      }
      if (n == 0) continue;
      if (!streaming) {
        body.append(chunk, n);
        continue;
      }
      if (!header_sent) {
        http::response_serializer<http::empty_body> sr{client_head};
        co_await http::async_write_header(client_, sr, net::redirect_error(net::use_awaitable, ec));
        if (ec) co_return client_gone(lease);
        header_sent = true;
      }
      co_await net::async_write(client_, http::make_chunk(net::buffer(chunk, n)),
                                net::redirect_error(net::use_awaitable, ec));
      if (ec) co_return client_gone(lease);
      stream_tail.append(chunk, n);
      if (stream_tail.find("data: [DONE]") != std::string::npos) saw_done = true;
      if (stream_tail.size() > 64) stream_tail.erase(0, stream_tail.size() - 64);
    }

    if (streaming) {
      if (!header_sent) co_return fail_before("engine ended the stream before its first byte");
      // note: an engine that closes a stream without chunked framing ends it with EOF, which beast
      // reports as a complete body; only the [DONE] sentinel tells a finished stream from a killed one.
      if (!saw_done && !parser.chunked()) {
        co_return co_await end_stream_with_error(lease, stream_tail,
                                                 "engine " + lease.address.url() + " closed the stream before [DONE]");
      }
      co_await net::async_write(client_, http::make_chunk_last(), net::redirect_error(net::use_awaitable, ec));
      if (ec) co_return client_gone(lease);
      pool_.release(lease, Outcome::kOk);
      co_return Attempt::kDone;
    }

    http::response<http::string_body> res{status, req.version()};
    res.set(http::field::content_type, content_type.empty() ? "application/json" : content_type);
    res.keep_alive(req.keep_alive());
    res.body() = std::move(body);
    res.prepare_payload();
    co_await http::async_write(client_, res, net::redirect_error(net::use_awaitable, ec));
    if (ec) co_return client_gone(lease);
    pool_.release(lease, Outcome::kOk);
    co_return Attempt::kDone;
  }

  Attempt client_gone(const Lease& lease) {
    pool_.release(lease, Outcome::kClientError);
    return Attempt::kClientGone;
  }

  // Bytes already reached the client, so the request cannot move: say why it stopped, in-band.
  awaitable<Attempt> end_stream_with_error(const Lease& lease, const std::string& tail, const std::string& message) {
    log::warn("router: {}", message);
    pool_.release(lease, Outcome::kFailedMidStream);
    pool_.mark_unreachable(lease.engine);
    std::string event = (ends_event(tail) ? "" : "\n\n") + stream_error_event(message);
    beast::error_code ec;
    co_await net::async_write(client_, http::make_chunk(net::buffer(event)), net::redirect_error(net::use_awaitable, ec));
    if (!ec) co_await net::async_write(client_, http::make_chunk_last(), net::redirect_error(net::use_awaitable, ec));
    // The reply ended well at the HTTP level; the connection may carry on.
    co_return ec ? Attempt::kClientGone : Attempt::kDone;
  }

  beast::tcp_stream client_;
  EnginePool& pool_;
  Policy& policy_;
  const RouterOptions& options_;
  const std::function<std::string()>& metrics_hook_;
  const std::function<nlohmann::json()>& health_hook_;
};

}  // namespace

Status Router::start() {
  beast::error_code ec;
  auto address = net::ip::make_address(options_.host, ec);
  if (ec) return Status::errorf("router: bad listen address '{}': {}", options_.host, ec.message());
  tcp::endpoint endpoint(address, static_cast<unsigned short>(options_.port));
  auto& acceptor = impl_->acceptor;
  acceptor.open(endpoint.protocol(), ec);
  if (!ec) acceptor.set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) acceptor.bind(endpoint, ec);
  if (!ec) acceptor.listen(net::socket_base::max_listen_connections, ec);
  if (ec) return Status::errorf("router: cannot listen on {}:{}: {}", options_.host, options_.port, ec.message());
  bound_port_ = acceptor.local_endpoint().port();

  net::co_spawn(
      impl_->ioc,
      [this]() -> awaitable<void> {
        for (;;) {
          beast::error_code aec;
          tcp::socket socket = co_await impl_->acceptor.async_accept(net::redirect_error(net::use_awaitable, aec));
          if (aec) {
            if (!impl_->accepting) co_return;
            continue;
          }
          socket.set_option(tcp::no_delay(true), aec);
          auto session = std::make_shared<Session>(std::move(socket), pool_, policy_, options_, metrics_hook_,
                                                   health_hook_);
          net::co_spawn(
              impl_->ioc, [session]() -> awaitable<void> { co_await session->run(); }, net::detached);
        }
      },
      net::detached);

  for (int i = 0; i < std::max(1, options_.threads); ++i) threads_.emplace_back([this] { impl_->ioc.run(); });
  health_thread_ = std::thread([this] { health_loop(); });
  log::info("router: listening on http://{}:{} ({} engines, policy {})", options_.host, bound_port_, pool_.size(),
            policy_name(policy_.kind()));
  return Status::ok();
}

void Router::health_loop() {
  while (!stopping_) {
    for (const auto& [index, address] : pool_.probe_targets()) {
      if (stopping_) return;
      Result<HttpReply> r = http_get(address.host, address.port, "/health", options_.health_timeout);
      pool_.report_probe(index, r.is_ok() && r->status == 200, options_.health_failures_to_down);
    }
    auto until = std::chrono::steady_clock::now() + options_.health_interval;
    while (!stopping_ && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

void Router::drain(std::chrono::milliseconds timeout) {
  if (impl_->accepting.exchange(false)) {
    net::post(impl_->ioc, [this] {
      beast::error_code ec;
      impl_->acceptor.close(ec);
    });
  }
  auto until = std::chrono::steady_clock::now() + timeout;
  while (pool_.in_flight() > 0 && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

void Router::stop() {
  if (stopping_.exchange(true)) return;
  impl_->accepting = false;
  impl_->ioc.stop();
  for (auto& t : threads_) t.join();
  threads_.clear();
  if (health_thread_.joinable()) health_thread_.join();
}

}  // namespace mpserve::router
