// The load generator's HTTP client: POSTs whose (streamed) body is handed over piece by piece as
// it arrives, over keep-alive connections shared by every request of a run, all on one
// io_context thread (Beast + C++20 coroutines). Every operation is bounded by the request's
// deadline; failures come back as values, never as exceptions.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <utility>  // note: Boost 1.74's awaitable.hpp uses std::exchange without including it
#include <vector>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core/tcp_stream.hpp>

#include "common/status.h"

namespace mpserve::bench {

using Clock = std::chrono::steady_clock;

struct HttpEndpoint {
  std::string host;
  int port = 80;
  std::string base_path;  // "" or "/prefix", no trailing slash; "/v1/..." is appended
  std::string api_key;    // sent as "Authorization: Bearer" when set
  std::string url() const;
};

// "http://host[:port][/prefix]"; a trailing "/" or "/v1" is dropped (paths are appended with it).
Result<HttpEndpoint> parse_base_url(const std::string& url);

Result<std::vector<boost::asio::ip::tcp::endpoint>> resolve(const HttpEndpoint& ep);

struct HttpReply {
  int status = 0;
  std::string body;
};

// One blocking GET on a fresh connection (the start-up probe and model lookup).
Result<HttpReply> http_get(const HttpEndpoint& ep, const std::string& path, std::chrono::milliseconds timeout);

// What one streamed POST came to at the HTTP level.
struct StreamReply {
  int status = 0;          // 0: no response header arrived
  std::string error;       // transport failure (connect, timeout, reset, body cut off); "" = none
  std::string body;        // a non-2xx reply's body (its first 4 KiB); 2xx bodies go to on_data only
  bool cancelled = false;  // StreamClient::cancel_all stopped it
};

class StreamClient {
 public:
  using OnData = std::function<void(std::string_view bytes, Clock::time_point arrival)>;

  StreamClient(boost::asio::any_io_executor ex, HttpEndpoint ep, std::vector<boost::asio::ip::tcp::endpoint> addrs);
  ~StreamClient();

  // POSTs `json_body` to `path` and calls `on_data` with each piece of a 2xx body as it arrives.
  // A reused keep-alive connection that the server closed meanwhile is retried once on a fresh one
  // (only before any reply byte arrived, so nothing is sent twice that the server answered).
  boost::asio::awaitable<StreamReply> post(const std::string& path, const std::string& json_body,
                                           Clock::time_point deadline, const OnData& on_data);

  // Stops every request in flight (they return `cancelled`), refuses new ones and closes idle
  // connections. Call on the io_context's thread.
  void cancel_all();
  void close_idle();

 private:
  boost::asio::any_io_executor ex_;
  HttpEndpoint ep_;
  std::vector<boost::asio::ip::tcp::endpoint> addrs_;
  std::string host_header_;
  // Connections that finished a reply with keep-alive, ready for the next request.
  std::vector<std::unique_ptr<boost::beast::tcp_stream>> idle_;
  // Connections a request is using now: cancel_all reaches them through this set.
  std::set<boost::beast::tcp_stream*> busy_;
  bool cancelled_ = false;
};

}  // namespace mpserve::bench
