#include "router/http_get.h"

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

namespace mpserve::router {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;

Result<HttpReply> http_get(const std::string& host, int port, const std::string& target,
                           std::chrono::milliseconds timeout) {
  // note: beast's synchronous calls take no deadline, so the async ones run on a private io_context with
  // tcp_stream's expiry; run() returns when the chain ends, by completion or by timeout.
  net::io_context ioc;
  beast::tcp_stream stream(ioc);
  net::ip::tcp::resolver resolver(ioc);
  beast::flat_buffer buffer;
  http::request<http::empty_body> req{http::verb::get, target, 11};
  req.set(http::field::host, host);
  req.set(http::field::connection, "close");
  http::response<http::string_body> res;
  beast::error_code result;

  stream.expires_after(timeout);
  resolver.async_resolve(host, std::to_string(port), [&](beast::error_code ec, net::ip::tcp::resolver::results_type r) {
    if (ec) { result = ec; return; }
    stream.async_connect(r, [&](beast::error_code ec2, const net::ip::tcp::endpoint&) {
      if (ec2) { result = ec2; return; }
      http::async_write(stream, req, [&](beast::error_code ec3, size_t) {
        if (ec3) { result = ec3; return; }
        http::async_read(stream, buffer, res, [&](beast::error_code ec4, size_t) { result = ec4; });
      });
    });
  });
  ioc.run();
  if (result) return Status::errorf("GET {}:{}{}: {}", host, port, target, result.message());
  HttpReply reply;
  reply.status = static_cast<int>(res.result_int());
  reply.body = std::move(res.body());
  return reply;
}

}  // namespace mpserve::router
