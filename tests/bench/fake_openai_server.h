// An in-test OpenAI-compatible server for the load generator's failure and parsing tests: each
// instance answers every POST /v1/completions in one scripted way (HTTP 500, a stream cut off,
// an error event, CRLF events split across writes, ...). Thread per connection, keep-alive.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

namespace mpserve::testing {

enum class FakeMode {
  kOk,              // one event per token (max_tokens of them, LF endings), usage, [DONE]
  kHttp500,         // 500 with an OpenAI error body
  kCloseMidStream,  // two events, then the connection drops (no terminating chunk)
  kErrorEvent,      // one event, then data: {"error":...}, then [DONE]
  kSplitCrlf,       // CRLF events, keepalive comments, every write a few bytes; usage says 2 tokens per event
  kNoUsage,         // like kOk without the usage chunk
  kShort,           // 3 events and usage of 3 tokens whatever max_tokens says
  kStall,           // the stream header, then silence
};

class FakeOpenAiServer {
 public:
  explicit FakeOpenAiServer(FakeMode mode) : mode_(mode), acceptor_(ioc_) {
    namespace net = boost::asio;
    net::ip::tcp::endpoint ep(net::ip::make_address("127.0.0.1"), 0);
    acceptor_.open(ep.protocol());
    acceptor_.set_option(net::socket_base::reuse_address(true));
    acceptor_.bind(ep);
    acceptor_.listen();
    port_ = acceptor_.local_endpoint().port();
    accept_thread_ = std::thread([this] { accept_loop(); });
  }
  ~FakeOpenAiServer() {
    stopping_ = true;
    boost::system::error_code ec;
    {
      // note: closing the acceptor from this thread does not wake a blocking accept(); a connection does.
      boost::asio::ip::tcp::socket wake(ioc_);
      wake.connect({boost::asio::ip::make_address("127.0.0.1"), static_cast<unsigned short>(port_)}, ec);
    }
    accept_thread_.join();
    acceptor_.close(ec);
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& s : sockets_) s->shutdown(boost::asio::ip::tcp::socket::shutdown_both, ec);
    for (auto& t : threads_) t.join();
  }
  FakeOpenAiServer(const FakeOpenAiServer&) = delete;
  FakeOpenAiServer& operator=(const FakeOpenAiServer&) = delete;

  int port() const { return port_; }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  int completions() const { return completions_.load(); }
  int connections() const { return connections_.load(); }

 private:
  using tcp = boost::asio::ip::tcp;

  void accept_loop() {
    for (;;) {
      auto sock = std::make_shared<tcp::socket>(ioc_);
      boost::system::error_code ec;
      acceptor_.accept(*sock, ec);
      if (ec || stopping_) return;
      ++connections_;
      std::lock_guard<std::mutex> lock(mu_);
      sockets_.push_back(sock);
      threads_.emplace_back([this, sock] { serve(*sock); });
    }
  }

  static std::string event(int i) {
    nlohmann::json ev{{"object", "text_completion"},
                      {"choices", nlohmann::json::array({{{"index", 0}, {"text", "t" + std::to_string(i)}}})}};
    return "data: " + ev.dump() + "\n\n";
  }
  static std::string usage(int prompt, int completion) {
    nlohmann::json ev{{"object", "text_completion"},
                      {"choices", nlohmann::json::array()},
                      {"usage", {{"prompt_tokens", prompt}, {"completion_tokens", completion}}}};
    return "data: " + ev.dump() + "\n\n";
  }

  void serve(tcp::socket& sock) {
    namespace beast = boost::beast;
    namespace http = beast::http;
    namespace net = boost::asio;
    beast::flat_buffer buf;
    for (;;) {
      beast::error_code ec;
      http::request<http::string_body> req;
      http::read(sock, buf, req, ec);
      if (ec) return;
      if (req.target() == "/v1/models") {
        http::response<http::string_body> res{http::status::ok, 11};
        res.set(http::field::content_type, "application/json");
        res.body() = R"({"object":"list","data":[{"id":"fake-model","object":"model"}]})";
        res.keep_alive(req.keep_alive());
        res.prepare_payload();
        http::write(sock, res, ec);
        if (ec || !req.keep_alive()) return;
        continue;
      }
      ++completions_;
      auto body = nlohmann::json::parse(req.body(), nullptr, false);
      int max_tokens = body.is_object() ? body.value("max_tokens", 4) : 4;
      int prompt_len = body.is_object() && body["prompt"].is_array() ? static_cast<int>(body["prompt"].size()) : 1;
      if (mode_ == FakeMode::kHttp500) {
        http::response<http::string_body> res{http::status::internal_server_error, 11};
        res.set(http::field::content_type, "application/json");
        res.body() = R"({"error":{"message":"the fake engine is broken","type":"server_error","code":500}})";
        res.keep_alive(req.keep_alive());
        res.prepare_payload();
        http::write(sock, res, ec);
        if (ec || !req.keep_alive()) return;
        continue;
      }
      http::response<http::empty_body> head{http::status::ok, 11};
      head.set(http::field::content_type, "text/event-stream");
      head.chunked(true);
      head.keep_alive(req.keep_alive());
      http::response_serializer<http::empty_body> sr{head};
      http::write_header(sock, sr, ec);
      auto chunk = [&](const std::string& s) {
        if (!ec) net::write(sock, http::make_chunk(net::buffer(s)), ec);
      };
      switch (mode_) {
        case FakeMode::kOk:
        case FakeMode::kNoUsage:
          for (int i = 0; i < max_tokens; ++i) chunk(event(i));
          if (mode_ == FakeMode::kOk) chunk(usage(prompt_len, max_tokens));
          break;
        case FakeMode::kCloseMidStream:
          chunk(event(0));
          chunk(event(1));
          sock.shutdown(tcp::socket::shutdown_both, ec);
          sock.close(ec);
          return;
        case FakeMode::kErrorEvent:
          chunk(event(0));
          chunk(R"(data: {"error":{"message":"boom","type":"engine_error","code":502}})" "\n\n");
          break;
        case FakeMode::kSplitCrlf: {
          std::string all = ": keepalive\r\n\r\n";
          for (int i = 0; i < max_tokens; ++i) {
            std::string e = event(i);
            e.replace(e.size() - 2, 2, "\r\n\r\n");
            all += e;
            if (i == 0) all += ":ping\r\n\r\n";
          }
          std::string u = usage(prompt_len, 2 * max_tokens);
          u.replace(u.size() - 2, 2, "\r\n\r\n");
          all += u + "data: [DONE]\r\n\r\n";
          for (size_t p = 0; p < all.size(); p += 7) {
            chunk(all.substr(p, 7));
            if (p % 70 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
          }
          chunk_last(sock, ec);
          if (ec || !req.keep_alive()) return;
          continue;
        }
        case FakeMode::kShort:
          for (int i = 0; i < 3; ++i) chunk(event(i));
          chunk(usage(prompt_len, 3));
          break;
        case FakeMode::kStall:
          while (!stopping_) std::this_thread::sleep_for(std::chrono::milliseconds(10));
          return;
        case FakeMode::kHttp500:
          break;
      }
      chunk("data: [DONE]\n\n");
      chunk_last(sock, ec);
      if (ec || !req.keep_alive()) return;
    }
  }

  static void chunk_last(tcp::socket& sock, boost::system::error_code& ec) {
    if (!ec) boost::asio::write(sock, boost::beast::http::make_chunk_last(), ec);
  }

  FakeMode mode_;
  boost::asio::io_context ioc_;
  tcp::acceptor acceptor_;
  int port_ = 0;
  std::atomic<bool> stopping_{false};
  std::atomic<int> completions_{0};
  std::atomic<int> connections_{0};
  std::mutex mu_;
  std::vector<std::shared_ptr<tcp::socket>> sockets_;
  std::vector<std::thread> threads_;
  std::thread accept_thread_;
};

}  // namespace mpserve::testing
