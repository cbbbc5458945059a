#include "server/http_server.h"

#include <array>
#include <deque>
#include <optional>
#include <thread>

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include "common/log.h"

namespace mpserve::server {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;

namespace {

constexpr size_t kHeaderLimit = 16 * 1024;
// Bytes of a pipelined next request we buffer while a response is pending.
constexpr size_t kMaxPipelinedBytes = 64 * 1024;
// After refusing a request (413, 400) we read and discard what the client still sends, so the
// close does not turn into a reset that destroys our response before the client reads it.
constexpr size_t kMaxDiscardBytes = 64u << 20;
constexpr std::chrono::seconds kDiscardTimeout{2};

}  // namespace

struct HttpServer::Impl {
  HttpServerOptions opts;
  Handler handler;
  net::io_context ioc;
  std::optional<net::executor_work_guard<net::io_context::executor_type>> work;
  tcp::acceptor acceptor{net::make_strand(ioc)};
  std::vector<std::thread> threads;
  std::atomic<bool> draining{false};
  std::atomic<int64_t> active{0};
  std::function<void(int)> observer;
  uint16_t port = 0;

  void do_accept();
  void observe(int status) {
    if (observer) observer(status);
  }
};

namespace {

std::string default_error_body(const std::string& message) {
  // Same shape as OpenAI errors; kept here so the HTTP layer can refuse requests by itself.
  std::string escaped;
  for (char c : message) {
    if (c == '"' || c == '\\') escaped += '\\';
    escaped += c;
  }
  return "{\"error\":{\"message\":\"" + escaped + "\",\"type\":\"invalid_request_error\",\"param\":null,\"code\":null}}";
}

class Session;

class ExchangeImpl final : public Exchange {
 public:
  ExchangeImpl(std::shared_ptr<Session> s, uint64_t id) : session_(std::move(s)), id_(id) {}
  void post(std::function<void()> f) override;
  void respond(int status, const std::string& content_type, std::string body, const Headers& extra) override;
  void start_stream(int status, const std::string& content_type, const Headers& extra) override;
  void write(std::string data) override;
  void end_stream() override;
  void on_disconnect(std::function<void()> f) override;
  bool disconnected() const override;

 private:
  std::shared_ptr<Session> session_;
  uint64_t id_;  // the session's exchange number; stale exchanges are ignored
};

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket socket, HttpServer::Impl& srv) : stream_(std::move(socket)), srv_(srv) {}

  void start() {
    net::dispatch(stream_.get_executor(), [self = shared_from_this()] { self->read_header(); });
  }

  // --- exchange operations, all on the strand; `id` guards against stale exchanges ---
  bool current(uint64_t id) const { return id == exchange_id_ && exchange_open_ && !closed_; }

  void respond(uint64_t id, int status, const std::string& content_type, std::string body, const Headers& extra) {
    if (!current(id) || response_started_) return;
    response_started_ = true;
    srv_.observe(status);
    auto res = std::make_shared<http::response<http::string_body>>(static_cast<http::status>(status), version_);
    res->set(http::field::server, "mpserve");
    res->set(http::field::content_type, content_type);
    for (const auto& [k, v] : extra) res->set(k, v);
    res->keep_alive(keep_alive_ && !srv_.draining.load());
    res->body() = std::move(body);
    res->prepare_payload();
    enqueue([self = shared_from_this(), res] {
      http::async_write(self->stream_, *res, [self, res](beast::error_code ec, size_t) { self->on_write(ec); });
    });
    finish_requested_ = true;
    if (!writing_) finish_exchange();
  }

  void start_stream(uint64_t id, int status, const std::string& content_type, const Headers& extra) {
    if (!current(id) || response_started_) return;
    response_started_ = true;
    srv_.observe(status);
    auto res = std::make_shared<http::response<http::empty_body>>(static_cast<http::status>(status), version_);
    res->set(http::field::server, "mpserve");
    res->set(http::field::content_type, content_type);
    res->set(http::field::cache_control, "no-cache");
    for (const auto& [k, v] : extra) res->set(k, v);
    // note: HTTP/1.0 has no chunked encoding; such a stream is delimited by closing instead.
    chunked_ = version_ >= 11;
    if (!chunked_) keep_alive_ = false;
    res->keep_alive(keep_alive_ && !srv_.draining.load());
    if (chunked_) res->chunked(true);
    auto sr = std::make_shared<http::response_serializer<http::empty_body>>(*res);
    enqueue([self = shared_from_this(), res, sr] {
      http::async_write_header(self->stream_, *sr,
                               [self, res, sr](beast::error_code ec, size_t) { self->on_write(ec); });
    });
  }

  void write(uint64_t id, std::string data) {
    if (!current(id) || !response_started_ || finish_requested_ || data.empty()) return;
    auto s = std::make_shared<std::string>(std::move(data));
    enqueue([self = shared_from_this(), s] {
      auto done = [self, s](beast::error_code ec, size_t) { self->on_write(ec); };
      if (self->chunked_) {
        net::async_write(self->stream_, http::make_chunk(net::buffer(*s)), done);
      } else {
        net::async_write(self->stream_, net::buffer(*s), done);
      }
    });
  }

  void end_stream(uint64_t id) {
    if (!current(id) || !response_started_ || finish_requested_) return;
    if (chunked_) {
      enqueue([self = shared_from_this()] {
        net::async_write(self->stream_, http::make_chunk_last(), [self](beast::error_code ec, size_t) { self->on_write(ec); });
      });
    }
    finish_requested_ = true;
    if (!writing_) finish_exchange();
  }

  void on_disconnect(uint64_t id, std::function<void()> f) {
    if (id != exchange_id_) return;
    if (disconnected_) {
      f();
      return;
    }
    on_disconnect_ = std::move(f);
  }

  bool disconnected(uint64_t id) const { return id != exchange_id_ || disconnected_; }

  beast::tcp_stream::executor_type executor() { return stream_.get_executor(); }

 private:
  // --- reading requests ---
  void read_header() {
    if (closed_) return;
    parser_.emplace();
    parser_->body_limit(srv_.opts.max_body_bytes);
    parser_->header_limit(kHeaderLimit);
    stream_.expires_after(srv_.opts.idle_timeout);
    http::async_read_header(stream_, buffer_, *parser_,
                            [self = shared_from_this()](beast::error_code ec, size_t) { self->on_header(ec); });
  }

  void on_header(beast::error_code ec) {
    if (ec) return on_read_error(ec);
    version_ = parser_->get().version();
    if (auto len = parser_->content_length(); len && *len > srv_.opts.max_body_bytes) {
      return refuse(413, "request body is larger than the limit of " + std::to_string(srv_.opts.max_body_bytes) + " bytes");
    }
    stream_.expires_after(srv_.opts.read_timeout);
    if (beast::iequals(parser_->get()[http::field::expect], "100-continue")) {
      auto cont = std::make_shared<http::response<http::empty_body>>(http::status::continue_, version_);
      http::async_write(stream_, *cont, [self = shared_from_this(), cont](beast::error_code ec2, size_t) {
        if (ec2) return self->hard_close();
        self->read_body();
      });
      return;
    }
    read_body();
  }

  void read_body() {
    http::async_read(stream_, buffer_, *parser_,
                     [self = shared_from_this()](beast::error_code ec, size_t) { self->on_body(ec); });
  }

  void on_read_error(beast::error_code ec) {
    if (ec == http::error::body_limit) {
      return refuse(413, "request body is larger than the limit of " + std::to_string(srv_.opts.max_body_bytes) + " bytes");
    }
    if (ec == http::error::header_limit) return refuse(431, "request header is too large");
    if (ec.category() == http::make_error_code(http::error::end_of_stream).category() && ec != http::error::end_of_stream &&
        ec != http::error::partial_message) {
      return refuse(400, "malformed HTTP request: " + ec.message());
    }
    hard_close();  // end of stream, timeout, reset: nothing to answer
  }

  void on_body(beast::error_code ec) {
    if (ec) return on_read_error(ec);
    auto msg = parser_->release();
    HttpRequest req;
    req.method = std::string(msg.method_string());
    req.target = std::string(msg.target());
    req.body = std::move(msg.body());
    req.arrival = std::chrono::steady_clock::now();
    keep_alive_ = msg.keep_alive();
    begin_exchange();
    auto ex = std::make_shared<ExchangeImpl>(shared_from_this(), exchange_id_);
    try {
      srv_.handler(std::move(req), ex);
    } catch (const std::exception& e) {
      log::error("http handler threw: {}", e.what());
      respond(exchange_id_, 500, "application/json", default_error_body("internal server error"), {});
    }
    // Watch the connection while the response is pending, to notice a client that leaves.
    if (exchange_open_ && !finish_requested_) start_watch();
  }

  // Refuses a request the parser could not accept, then closes the connection.
  void refuse(int status, const std::string& message) {
    keep_alive_ = false;
    begin_exchange();
    respond(exchange_id_, status, "application/json", default_error_body(message), {});
  }

  void begin_exchange() {
    ++exchange_id_;
    exchange_open_ = true;
    response_started_ = false;
    finish_requested_ = false;
    disconnected_ = false;
    on_disconnect_ = nullptr;
    srv_.active.fetch_add(1);
    stream_.expires_never();
  }

  // --- writing ---
  void enqueue(std::function<void()> op) {
    writes_.push_back(std::move(op));
    if (!writing_) next_write();
  }

  void next_write() {
    if (writes_.empty()) {
      writing_ = false;
      if (finish_requested_ && exchange_open_) finish_exchange();
      return;
    }
    writing_ = true;
    auto op = std::move(writes_.front());
    writes_.pop_front();
    op();
  }

  void on_write(beast::error_code ec) {
    if (ec) {
      writing_ = false;
      writes_.clear();
      return peer_gone();
    }
    next_write();
  }

  void finish_exchange() {
    if (!exchange_open_) return;
    exchange_open_ = false;
    on_disconnect_ = nullptr;
    srv_.active.fetch_sub(1);
    if (watching_) {
      beast::error_code ec;
      stream_.socket().cancel(ec);  // on_watch continues with after_exchange()
      return;
    }
    after_exchange();
  }

  void after_exchange() {
    if (closed_) return;
    if (keep_alive_ && !srv_.draining.load()) return read_header();
    close_gracefully();
  }

  // --- noticing a client that leaves while we work on its request ---
  void start_watch() {
    if (watching_ || closed_ || buffer_.size() >= kMaxPipelinedBytes) return;
    watching_ = true;
    stream_.async_read_some(buffer_.prepare(4096), [self = shared_from_this()](beast::error_code ec, size_t n) {
      self->on_watch(ec, n);
    });
  }

  void on_watch(beast::error_code ec, size_t n) {
    watching_ = false;
    if (closed_) return;
    if (!ec) buffer_.commit(n);  // a pipelined request: kept for read_header()
    bool gone = ec && ec != net::error::operation_aborted;
    if (exchange_open_) {
      if (gone) return peer_gone();
      return start_watch();
    }
    if (gone) return hard_close();
    after_exchange();
  }

  void peer_gone() {
    if (closed_) return;
    disconnected_ = true;
    bool was_open = exchange_open_;
    if (exchange_open_) {
      exchange_open_ = false;
      srv_.active.fetch_sub(1);
    }
    auto cb = std::move(on_disconnect_);
    on_disconnect_ = nullptr;
    hard_close();
    if (was_open && cb) cb();
  }

  void hard_close() {
    if (closed_) return;
    closed_ = true;
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ec);
    stream_.close();
  }

  void close_gracefully() {
    if (closed_) return;
    closed_ = true;
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
    stream_.expires_after(kDiscardTimeout);
    discard_until_eof();
  }

  void discard_until_eof() {
    auto buf = std::make_shared<std::array<char, 8192>>();
    stream_.async_read_some(net::buffer(*buf), [self = shared_from_this(), buf](beast::error_code ec, size_t n) {
      self->discarded_ += n;
      if (ec || self->discarded_ > kMaxDiscardBytes) {
        self->stream_.close();
        return;
      }
      self->discard_until_eof();
    });
  }

  beast::tcp_stream stream_;
  HttpServer::Impl& srv_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  unsigned version_ = 11;
  bool keep_alive_ = false;
  bool chunked_ = true;

  // The current exchange: its number, and where its response stands.
  uint64_t exchange_id_ = 0;
  bool exchange_open_ = false;     // begun, response not completely written
  bool response_started_ = false;  // a header (or whole response) has been queued
  bool finish_requested_ = false;  // the last write of the response has been queued
  bool disconnected_ = false;
  std::function<void()> on_disconnect_;

  std::deque<std::function<void()>> writes_;
  bool writing_ = false;
  bool watching_ = false;
  bool closed_ = false;
  size_t discarded_ = 0;
};

void ExchangeImpl::post(std::function<void()> f) { net::post(session_->executor(), std::move(f)); }
void ExchangeImpl::respond(int status, const std::string& content_type, std::string body, const Headers& extra) {
  session_->respond(id_, status, content_type, std::move(body), extra);
}
void ExchangeImpl::start_stream(int status, const std::string& content_type, const Headers& extra) {
  session_->start_stream(id_, status, content_type, extra);
}
void ExchangeImpl::write(std::string data) { session_->write(id_, std::move(data)); }
void ExchangeImpl::end_stream() { session_->end_stream(id_); }
void ExchangeImpl::on_disconnect(std::function<void()> f) { session_->on_disconnect(id_, std::move(f)); }
bool ExchangeImpl::disconnected() const { return session_->disconnected(id_); }

}  // namespace

void HttpServer::Impl::do_accept() {
  acceptor.async_accept(net::make_strand(ioc), [this](beast::error_code ec, tcp::socket socket) {
    if (ec) {
      if (!acceptor.is_open()) return;  // stop_accepting()
      log::warn("accept failed: {}", ec.message());
    } else {
      std::make_shared<Session>(std::move(socket), *this)->start();
    }
    do_accept();
  });
}

HttpServer::HttpServer(HttpServerOptions opts, Handler handler) : impl_(std::make_unique<Impl>()) {
  impl_->opts = std::move(opts);
  impl_->handler = std::move(handler);
}

HttpServer::~HttpServer() { stop(); }

Status HttpServer::start() {
  Impl& m = *impl_;
  beast::error_code ec;
  auto addr = net::ip::make_address(m.opts.host, ec);
  if (ec) return Status::errorf("bad --host {}: {}", m.opts.host, ec.message());
  tcp::endpoint ep(addr, m.opts.port);
  if (m.acceptor.open(ep.protocol(), ec); ec) return Status::errorf("socket: {}", ec.message());
  if (m.acceptor.set_option(net::socket_base::reuse_address(true), ec); ec) {
    return Status::errorf("SO_REUSEADDR: {}", ec.message());
  }
  if (m.acceptor.bind(ep, ec); ec) return Status::errorf("bind {}:{}: {}", m.opts.host, m.opts.port, ec.message());
  if (m.acceptor.listen(net::socket_base::max_listen_connections, ec); ec) {
    return Status::errorf("listen: {}", ec.message());
  }
  m.port = m.acceptor.local_endpoint().port();
  m.work.emplace(m.ioc.get_executor());
  net::dispatch(m.acceptor.get_executor(), [&m] { m.do_accept(); });
  for (int i = 0; i < std::max(1, m.opts.threads); ++i) m.threads.emplace_back([&m] { m.ioc.run(); });
  return Status::ok();
}

uint16_t HttpServer::port() const { return impl_->port; }

void HttpServer::stop_accepting() {
  impl_->draining.store(true);
  net::post(impl_->acceptor.get_executor(), [m = impl_.get()] {
    beast::error_code ec;
    m->acceptor.close(ec);
  });
}

int64_t HttpServer::active_exchanges() const { return impl_->active.load(); }

void HttpServer::stop() {
  Impl& m = *impl_;
  m.work.reset();
  m.ioc.stop();
  for (auto& t : m.threads) {
    if (t.joinable()) t.join();
  }
  m.threads.clear();
}

void HttpServer::set_response_observer(std::function<void(int)> f) { impl_->observer = std::move(f); }

}  // namespace mpserve::server
