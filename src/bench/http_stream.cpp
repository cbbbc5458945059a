#include "bench/http_stream.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <limits>
#include <optional>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

namespace mpserve::bench {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
using net::awaitable;
using net::ip::tcp;

namespace {

constexpr size_t kMaxErrorBody = 4096;

std::string describe(const beast::error_code& ec, Clock::time_point deadline) {
  if (ec == beast::error::timeout || (ec == net::error::operation_aborted && Clock::now() >= deadline)) {
    return "timed out";
  }
  return ec.message();
}

// Marks a connection busy for as long as a request uses it.
class BusyMark {
 public:
  BusyMark(std::set<beast::tcp_stream*>* set, beast::tcp_stream* s) : set_(set), s_(s) { set_->insert(s_); }
  ~BusyMark() { set_->erase(s_); }
  BusyMark(const BusyMark&) = delete;
  BusyMark& operator=(const BusyMark&) = delete;

 private:
  std::set<beast::tcp_stream*>* set_;
  beast::tcp_stream* s_;
};

}  // namespace

std::string HttpEndpoint::url() const { return fmt::format("http://{}:{}{}", host, port, base_path); }

Result<HttpEndpoint> parse_base_url(const std::string& url) {
  const std::string scheme = "http://";
  if (url.rfind("https://", 0) == 0) return Status::errorf("base URL {}: https is not supported (use http://)", url);
  if (url.rfind(scheme, 0) != 0) return Status::errorf("base URL {}: expected http://host[:port][/path]", url);
  std::string rest = url.substr(scheme.size());
  size_t slash = rest.find('/');
  std::string authority = rest.substr(0, slash);
  HttpEndpoint ep;
  ep.base_path = slash == std::string::npos ? "" : rest.substr(slash);
  while (!ep.base_path.empty() && ep.base_path.back() == '/') ep.base_path.pop_back();
  if (ep.base_path.size() >= 3 && ep.base_path.compare(ep.base_path.size() - 3, 3, "/v1") == 0) {
    ep.base_path.resize(ep.base_path.size() - 3);
  }
  std::string port_text;
  if (!authority.empty() && authority.front() == '[') {  // [v6 address]:port
    size_t close = authority.find(']');
    if (close == std::string::npos) return Status::errorf("base URL {}: unterminated '['", url);
    ep.host = authority.substr(1, close - 1);
    if (close + 1 < authority.size()) {
      if (authority[close + 1] != ':') return Status::errorf("base URL {}: bad port", url);
      port_text = authority.substr(close + 2);
    }
  } else {
    size_t colon = authority.rfind(':');
    ep.host = authority.substr(0, colon);
    if (colon != std::string::npos) port_text = authority.substr(colon + 1);
  }
  if (ep.host.empty()) return Status::errorf("base URL {}: no host", url);
  if (!port_text.empty()) {
    if (port_text.size() > 5 || !std::all_of(port_text.begin(), port_text.end(), [](unsigned char c) { return std::isdigit(c); })) {
      return Status::errorf("base URL {}: bad port '{}'", url, port_text);
    }
    ep.port = std::stoi(port_text);
    if (ep.port < 1 || ep.port > 65535) return Status::errorf("base URL {}: port {} out of range", url, ep.port);
  }
  return ep;
}

Result<std::vector<tcp::endpoint>> resolve(const HttpEndpoint& ep) {
  net::io_context ioc;
  tcp::resolver resolver(ioc);
  beast::error_code ec;
  auto results = resolver.resolve(ep.host, std::to_string(ep.port), ec);
  if (ec) return Status::errorf("cannot resolve {}: {}", ep.host, ec.message());
  std::vector<tcp::endpoint> out;
  for (const auto& r : results) out.push_back(r.endpoint());
  if (out.empty()) return Status::errorf("cannot resolve {}: no addresses", ep.host);
  return out;
}

Result<HttpReply> http_get(const HttpEndpoint& ep, const std::string& path, std::chrono::milliseconds timeout) {
  MPS_ASSIGN_OR_RETURN(std::vector<tcp::endpoint> addrs, resolve(ep));
  net::io_context ioc;
  beast::error_code result;
  HttpReply reply;
  auto deadline = Clock::now() + timeout;
  net::co_spawn(
      ioc,
      [&]() -> awaitable<void> {
        beast::tcp_stream s(co_await net::this_coro::executor);
        beast::error_code ec;
        s.expires_at(deadline);
        co_await s.async_connect(addrs, net::redirect_error(net::use_awaitable, ec));
        if (ec) { result = ec; co_return; }
        http::request<http::empty_body> req{http::verb::get, ep.base_path + path, 11};
        req.set(http::field::host, ep.host + ":" + std::to_string(ep.port));
        if (!ep.api_key.empty()) req.set(http::field::authorization, "Bearer " + ep.api_key);
        req.keep_alive(false);
        s.expires_at(deadline);
        co_await http::async_write(s, req, net::redirect_error(net::use_awaitable, ec));
        if (ec) { result = ec; co_return; }
        beast::flat_buffer buf;
        http::response_parser<http::string_body> parser;
        parser.body_limit(16u << 20);
        s.expires_at(deadline);
        co_await http::async_read(s, buf, parser, net::redirect_error(net::use_awaitable, ec));
        if (ec) { result = ec; co_return; }
        reply.status = static_cast<int>(parser.get().result_int());
        reply.body = std::move(parser.get().body());
        s.socket().shutdown(tcp::socket::shutdown_both, ec);
      },
      net::detached);
  ioc.run();
  if (result) return Status::errorf("GET {}{}: {}", ep.url(), path, describe(result, deadline));
  return reply;
}

StreamClient::StreamClient(net::any_io_executor ex, HttpEndpoint ep, std::vector<tcp::endpoint> addrs)
    : ex_(std::move(ex)), ep_(std::move(ep)), addrs_(std::move(addrs)),
      host_header_(ep_.host + ":" + std::to_string(ep_.port)) {}

StreamClient::~StreamClient() = default;

void StreamClient::cancel_all() {
  cancelled_ = true;
  for (beast::tcp_stream* s : busy_) s->cancel();
  close_idle();
}

void StreamClient::close_idle() {
  for (auto& s : idle_) {
    beast::error_code ec;
    s->socket().shutdown(tcp::socket::shutdown_both, ec);
    s->close();
  }
  idle_.clear();
}

awaitable<StreamReply> StreamClient::post(const std::string& path, const std::string& json_body,
                                          Clock::time_point deadline, const OnData& on_data) {
  StreamReply r;
  http::request<http::string_body> req{http::verb::post, ep_.base_path + path, 11};
  req.set(http::field::host, host_header_);
  req.set(http::field::content_type, "application/json");
  req.set(http::field::accept, "text/event-stream");
  if (!ep_.api_key.empty()) req.set(http::field::authorization, "Bearer " + ep_.api_key);
  req.keep_alive(true);
  req.body() = json_body;
  req.prepare_payload();

  for (int attempt = 0;; ++attempt) {
    if (cancelled_) {
      r.cancelled = true;
      co_return r;
    }
    beast::error_code ec;
    std::unique_ptr<beast::tcp_stream> s;
    bool reused = false;
    if (!idle_.empty() && attempt == 0) {
      s = std::move(idle_.back());
      idle_.pop_back();
      reused = true;
    } else {
      s = std::make_unique<beast::tcp_stream>(ex_);
    }
    BusyMark busy(&busy_, s.get());
    if (!reused) {
      s->expires_at(deadline);
      co_await s->async_connect(addrs_, net::redirect_error(net::use_awaitable, ec));
      if (ec) {
        r.cancelled = cancelled_;
        r.error = "connect to " + ep_.url() + ": " + describe(ec, deadline);
        co_return r;
      }
      s->socket().set_option(tcp::no_delay(true), ec);
    }
    // A stale keep-alive connection shows as a failed write or an EOF/reset before the header.
    auto stale = [&] { return reused && !cancelled_ && Clock::now() < deadline; };

    s->expires_at(deadline);
    co_await http::async_write(*s, req, net::redirect_error(net::use_awaitable, ec));
    if (ec) {
      if (stale()) continue;
      r.cancelled = cancelled_;
      r.error = "sending the request: " + describe(ec, deadline);
      co_return r;
    }

    beast::flat_buffer buf;
    http::response_parser<http::buffer_body> parser;
    // note: Boost 1.74 compares the length against an empty optional as "exceeded", so the
    // unlimited body is spelled as the largest limit instead of boost::none.
    parser.body_limit(std::numeric_limits<std::uint64_t>::max());
    s->expires_at(deadline);
    co_await http::async_read_header(*s, buf, parser, net::redirect_error(net::use_awaitable, ec));
    if (ec) {
      if (stale() && buf.size() == 0) continue;
      r.cancelled = cancelled_;
      r.error = "reading the response header: " + describe(ec, deadline);
      co_return r;
    }
    r.status = static_cast<int>(parser.get().result_int());
    bool ok = r.status / 100 == 2;

    char chunk[16384];
    while (!parser.is_done()) {
      parser.get().body().data = chunk;
      parser.get().body().size = sizeof(chunk);
      s->expires_at(deadline);
      // note: read_some, not read: read would wait to fill the chunk buffer, batching the events of
      // a stream and blurring their arrival times.
      co_await http::async_read_some(*s, buf, parser, net::redirect_error(net::use_awaitable, ec));
      auto arrival = Clock::now();
      if (ec == http::error::need_buffer) ec = {};
      size_t n = sizeof(chunk) - parser.get().body().size;
      if (n > 0) {
        if (ok) {
          on_data(std::string_view(chunk, n), arrival);
        } else if (r.body.size() < kMaxErrorBody) {
          r.body.append(chunk, std::min(n, kMaxErrorBody - r.body.size()));
        }
      }
      if (ec) {
        r.cancelled = cancelled_;
        r.error = "reading the response body: " + describe(ec, deadline);
        co_return r;
      }
    }
    if (parser.keep_alive() && !cancelled_) {
      s->expires_never();
      idle_.push_back(std::move(s));
    } else {
      s->socket().shutdown(tcp::socket::shutdown_both, ec);
    }
    co_return r;
  }
}

}  // namespace mpserve::bench
