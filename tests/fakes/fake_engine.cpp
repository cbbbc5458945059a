// A stand-in for a third-party OpenAI-compatible engine, for router and supervisor tests: answers
// /health, /v1/completions and /v1/chat/completions (streaming SSE and not) with canned text, and can
// be told to be slow, to crash after N requests (mid-stream when streaming), or to report ill health.
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
using net::ip::tcp;

namespace {

struct Flags {
  int port = 0;
  std::string name = "fake";
  // Crash (exit at once, no reply or a broken stream) on the request after this many; -1 = never.
  long fail_after = -1;
  int delay_ms = 0;         // before a non-streaming reply, and between stream chunks
  int stream_chunks = 4;    // SSE events before [DONE]
  std::string pid_file;     // written once listening
  std::string port_file;    // the bound port, written once listening (for --port 0)
  std::string unhealthy_file;  // /health answers 503 while this file exists
  int startup_delay_ms = 0;    // before listening
};

Flags g_flags;
std::atomic<long> g_requests{0};

std::string body_for(const nlohmann::json& req, bool chat, long seq) {
  nlohmann::json choice{{"index", 0}, {"finish_reason", "length"}};
  std::string text = "hello from " + g_flags.name;
  if (chat) choice["message"] = {{"role", "assistant"}, {"content", text}};
  else choice["text"] = text;
  nlohmann::json out{{"id", "cmpl-" + std::to_string(seq)},
                     {"object", chat ? "chat.completion" : "text_completion"},
                     {"model", req.value("model", "fake")},
                     {"engine", g_flags.name},
                     {"pid", static_cast<int>(getpid())},
                     {"choices", nlohmann::json::array({choice})},
                     {"usage", {{"prompt_tokens", 1}, {"completion_tokens", g_flags.stream_chunks}}}};
  return out.dump();
}

std::string event_for(bool chat, int i) {
  nlohmann::json choice{{"index", 0}, {"finish_reason", nullptr}};
  std::string piece = "tok" + std::to_string(i) + " ";
  if (chat) choice["delta"] = {{"content", piece}};
  else choice["text"] = piece;
  nlohmann::json ev{{"object", chat ? "chat.completion.chunk" : "text_completion"},
                    {"engine", g_flags.name},
                    {"choices", nlohmann::json::array({choice})}};
  return "data: " + ev.dump() + "\n\n";
}

void sleep_ms(int ms) {
  if (ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(ms));
}

void serve(tcp::socket socket) {
  beast::error_code ec;
  beast::flat_buffer buffer;
  for (;;) {
    http::request<http::string_body> req;
    http::read(socket, buffer, req, ec);
    if (ec) return;
    std::string target(req.target());
    http::response<http::string_body> res{http::status::ok, req.version()};
    res.keep_alive(req.keep_alive());
    res.set(http::field::content_type, "application/json");
    if (target == "/health") {
      bool sick = !g_flags.unhealthy_file.empty() && std::filesystem::exists(g_flags.unhealthy_file);
      res.result(sick ? http::status::service_unavailable : http::status::ok);
      res.body() = sick ? R"({"status":"unhealthy"})" : R"({"status":"ok"})";
    } else if (target == "/metrics") {
      res.set(http::field::content_type, "text/plain");
      res.body() = "fake_requests_total " + std::to_string(g_requests.load()) + "\n";
    } else if (req.method() == http::verb::post && (target == "/v1/completions" || target == "/v1/chat/completions")) {
      bool chat = target == "/v1/chat/completions";
      nlohmann::json body = nlohmann::json::parse(req.body(), nullptr, false);
      if (!body.is_object()) {
        res.result(http::status::bad_request);
        res.body() = R"({"error":{"message":"body is not JSON","type":"invalid_request_error"}})";
      } else {
        long seq = g_requests.fetch_add(1) + 1;
        bool crash = g_flags.fail_after >= 0 && seq > g_flags.fail_after;
        bool stream = body.value("stream", false) == true;
        if (crash && !stream) _exit(3);
        if (stream) {
          http::response<http::empty_body> head{http::status::ok, req.version()};
          head.set(http::field::content_type, "text/event-stream");
          head.chunked(true);
          head.keep_alive(req.keep_alive());
          http::response_serializer<http::empty_body> sr{head};
          http::write_header(socket, sr, ec);
          for (int i = 0; i < g_flags.stream_chunks && !ec; ++i) {
            sleep_ms(g_flags.delay_ms);
            net::write(socket, http::make_chunk(net::buffer(event_for(chat, i))), ec);
            if (crash && i == 0) _exit(3);  // mid-stream: one event out, then gone
          }
          if (!ec) net::write(socket, http::make_chunk(net::buffer(std::string("data: [DONE]\n\n"))), ec);
          if (!ec) net::write(socket, http::make_chunk_last(), ec);
          if (ec || !req.keep_alive()) return;
          continue;
        }
        sleep_ms(g_flags.delay_ms);
        res.body() = body_for(body, chat, seq);
      }
    } else {
      res.result(http::status::not_found);
      res.body() = R"({"error":{"message":"not found"}})";
    }
    res.prepare_payload();
    http::write(socket, res, ec);
    if (ec || !req.keep_alive()) return;
  }
}

void write_file(const std::string& path, const std::string& text) {
  std::string tmp = path + ".tmp";
  std::ofstream(tmp) << text;
  std::rename(tmp.c_str(), path.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "fake_engine: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--port") g_flags.port = std::stoi(next());
    else if (a == "--name") g_flags.name = next();
    else if (a == "--fail-after") g_flags.fail_after = std::stol(next());
    else if (a == "--delay-ms") g_flags.delay_ms = std::stoi(next());
    else if (a == "--stream-chunks") g_flags.stream_chunks = std::stoi(next());
    else if (a == "--pid-file") g_flags.pid_file = next();
    else if (a == "--port-file") g_flags.port_file = next();
    else if (a == "--unhealthy-file") g_flags.unhealthy_file = next();
    else if (a == "--startup-delay-ms") g_flags.startup_delay_ms = std::stoi(next());
    else {
      std::fprintf(stderr, "fake_engine: unknown flag %s\n", a.c_str());
      return 2;
    }
  }
  signal(SIGPIPE, SIG_IGN);
  sleep_ms(g_flags.startup_delay_ms);
  net::io_context ioc;
  tcp::acceptor acceptor(ioc, tcp::endpoint(net::ip::make_address("127.0.0.1"), static_cast<unsigned short>(g_flags.port)));
  int port = acceptor.local_endpoint().port();
  if (!g_flags.pid_file.empty()) write_file(g_flags.pid_file, std::to_string(getpid()) + "\n");
  if (!g_flags.port_file.empty()) write_file(g_flags.port_file, std::to_string(port) + "\n");
  std::fprintf(stderr, "fake_engine %s: pid %d listening on 127.0.0.1:%d\n", g_flags.name.c_str(), getpid(), port);
  for (;;) {
    tcp::socket socket(ioc);
    beast::error_code ec;
    acceptor.accept(socket, ec);
    if (ec) continue;
    socket.set_option(tcp::no_delay(true), ec);
    std::thread(serve, std::move(socket)).detach();
  }
}
