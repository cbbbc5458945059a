// A small HTTP/1.1 server on Boost.Beast: an accept loop, keep-alive connections, a body size
// limit, timeouts, chunked streaming, and detection of clients that go away mid-response.
// Beast stays inside http_server.cpp; handlers see only the plain types below.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/status.h"

namespace mpserve::server {

using Headers = std::vector<std::pair<std::string, std::string>>;

struct HttpRequest {
  std::string method;  // "GET", "POST", ...
  std::string target;  // path and query as sent
  std::string body;
  // Local arrival time of the complete request.
  std::chrono::steady_clock::time_point arrival;
};

// One request/response exchange on a connection. Every method must be called on the
// connection's strand: the handler is, and post() gets other threads there.
class Exchange {
 public:
  virtual ~Exchange() = default;
  // Runs f on the connection's strand. Thread-safe; the only method callable from anywhere.
  virtual void post(std::function<void()> f) = 0;
  // A complete response.
  virtual void respond(int status, const std::string& content_type, std::string body, const Headers& extra = {}) = 0;
  // A chunked response: the header now, then write() any number of times, then end_stream().
  virtual void start_stream(int status, const std::string& content_type, const Headers& extra = {}) = 0;
  virtual void write(std::string data) = 0;
  virtual void end_stream() = 0;
  // f runs once, on the strand, if the client goes away before the response is complete (it
  // closed the connection, or a write failed). Runs at once if that already happened.
  virtual void on_disconnect(std::function<void()> f) = 0;
  virtual bool disconnected() const = 0;
};

using Handler = std::function<void(HttpRequest, std::shared_ptr<Exchange>)>;

struct HttpServerOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 8000;  // 0 = any free port; port() tells which
  int threads = 2;
  size_t max_body_bytes = 4 << 20;  // larger bodies get 413
  std::chrono::seconds read_timeout{30};  // to read one request once it has begun
  std::chrono::seconds idle_timeout{75};  // keep-alive connection with no request
};

class HttpServer {
 public:
  HttpServer(HttpServerOptions opts, Handler handler);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds and listens, then starts the I/O threads.
  Status start();
  uint16_t port() const;
  // Closes the listening socket; open connections finish what they are doing and responses
  // from now on carry `Connection: close`.
  void stop_accepting();
  // Exchanges begun and not yet completely written.
  int64_t active_exchanges() const;
  // Stops the I/O threads and drops every connection.
  void stop();
  // Called (on an I/O thread) with the status code of every response sent.
  void set_response_observer(std::function<void(int)> f);

  struct Impl;  // public only so that the connection code in http_server.cpp can name it

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace mpserve::server
