// The real `mpserve engine` on loopback with the embedded tiny model, driven over raw HTTP.
#include <gtest/gtest.h>

#include <atomic>
#include <functional>
#include <future>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "server/server_test_util.h"

namespace mpserve::testing {
namespace {

using json = nlohmann::json;

// One server per test binary process (gtest_discover_tests runs each test in its own process,
// so each test pays one start of the tiny model).
class ServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { server_ = new ServerProcess(); }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }
  void SetUp() override { ASSERT_TRUE(server_->ready()) << "mpserve engine did not print its ready line"; }
  uint16_t port() const { return server_->port(); }
  std::map<std::string, double> scrape() { return parse_metrics(get(port(), "/metrics").body); }
  std::string model_name() {
    return json::parse(get(port(), "/v1/models").body)["data"][0]["id"].get<std::string>();
  }

  static ServerProcess* server_;
};
ServerProcess* ServerTest::server_ = nullptr;

// Asserts an OpenAI-style error body and returns its message.
std::string expect_error(const HttpResult& r, int status) {
  EXPECT_EQ(r.status, status) << r.body;
  json j = json::parse(r.body, nullptr, false);
  EXPECT_FALSE(j.is_discarded()) << r.body;
  if (j.is_discarded()) return "";
  EXPECT_TRUE(j.contains("error") && j["error"].is_object()) << r.body;
  const json& e = j["error"];
  EXPECT_TRUE(e["message"].is_string() && !e["message"].get<std::string>().empty()) << r.body;
  EXPECT_TRUE(e["type"].is_string()) << r.body;
  EXPECT_TRUE(e.contains("param") && e.contains("code")) << r.body;
  return e["message"].is_string() ? e["message"].get<std::string>() : "";
}

// Waits until the engine holds no request and no KV block; returns whether it got there.
bool wait_engine_idle(const std::function<std::map<std::string, double>()>& scrape) {
  for (int i = 0; i < 300; ++i) {
    auto m = scrape();
    if (metric(m, "mpserve_num_requests_running") == 0 && metric(m, "mpserve_num_requests_waiting") == 0 &&
        metric(m, "mpserve_kv_cache_blocks_used") == 0) {
      return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

TEST_F(ServerTest, health_and_models_report_the_served_model) {
  EXPECT_NE(server_->ready_line().find("model="), std::string::npos);
  auto h = get(port(), "/health");
  EXPECT_EQ(h.status, 200);
  auto m = get(port(), "/v1/models");
  ASSERT_EQ(m.status, 200);
  json j = json::parse(m.body);
  EXPECT_EQ(j["object"], "list");
  ASSERT_EQ(j["data"].size(), 1u);
  EXPECT_EQ(j["data"][0]["object"], "model");
  EXPECT_NE(server_->ready_line().find("model=" + j["data"][0]["id"].get<std::string>()), std::string::npos);
}

TEST_F(ServerTest, completion_returns_text_usage_and_length_finish) {
  auto r = post(port(), "/v1/completions",
                json{{"model", model_name()}, {"prompt", "Hello there"}, {"max_tokens", 5}, {"ignore_eos", true},
                     {"temperature", 0}}
                    .dump());
  ASSERT_EQ(r.status, 200) << r.body;
  json j = json::parse(r.body);
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["id"].get<std::string>().rfind("cmpl-", 0), 0u);
  ASSERT_EQ(j["choices"].size(), 1u);
  EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
  EXPECT_TRUE(j["choices"][0]["text"].is_string());
  EXPECT_EQ(j["usage"]["completion_tokens"], 5);
  EXPECT_GT(j["usage"]["prompt_tokens"].get<int>(), 0);
  EXPECT_EQ(j["usage"]["total_tokens"].get<int>(),
            j["usage"]["prompt_tokens"].get<int>() + j["usage"]["completion_tokens"].get<int>());
}

TEST_F(ServerTest, completion_accepts_token_ids_prompt_lists_and_n) {
  auto r = post(port(), "/v1/completions", R"({"prompt":[1,2,3],"max_tokens":2,"ignore_eos":true})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(json::parse(r.body)["usage"]["prompt_tokens"], 3);

  r = post(port(), "/v1/completions", R"({"prompt":["one","two"],"max_tokens":3,"ignore_eos":true})");
  ASSERT_EQ(r.status, 200) << r.body;
  json j = json::parse(r.body);
  ASSERT_EQ(j["choices"].size(), 2u);
  EXPECT_EQ(j["choices"][1]["index"], 1);
  EXPECT_EQ(j["usage"]["completion_tokens"], 6);

  r = post(port(), "/v1/completions", R"({"prompt":"x","max_tokens":3,"n":2,"seed":7,"ignore_eos":true})");
  ASSERT_EQ(r.status, 200) << r.body;
  j = json::parse(r.body);
  ASSERT_EQ(j["choices"].size(), 2u);
  EXPECT_EQ(j["usage"]["completion_tokens"], 6);
  EXPECT_EQ(j["usage"]["prompt_tokens"], 1);  // a prompt shared by n choices counts once
}

TEST_F(ServerTest, chat_completion_goes_through_the_template) {
  auto r = post(port(), "/v1/chat/completions",
                R"({"messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hi"}],
                    "max_completion_tokens":4,"ignore_eos":true})");
  ASSERT_EQ(r.status, 200) << r.body;
  json j = json::parse(r.body);
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_EQ(j["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(j["usage"]["completion_tokens"], 4);
  // The template adds role markers, so the prompt is longer than the two words.
  EXPECT_GT(j["usage"]["prompt_tokens"].get<int>(), 6);
}

TEST_F(ServerTest, greedy_stream_concatenates_to_the_plain_completion) {
  json body = {{"prompt", "The quick brown fox"}, {"max_tokens", 24}, {"temperature", 0}, {"ignore_eos", true}};
  auto plain = post(port(), "/v1/completions", body.dump());
  ASSERT_EQ(plain.status, 200) << plain.body;
  std::string expected = json::parse(plain.body)["choices"][0]["text"];

  body["stream"] = true;
  body["stream_options"] = {{"include_usage", true}};
  auto s = post(port(), "/v1/completions", body.dump());
  ASSERT_EQ(s.status, 200);
  EXPECT_EQ(s.headers["Content-Type"], "text/event-stream");
  auto events = sse_events(s.body);
  ASSERT_GE(events.size(), 3u);
  EXPECT_EQ(events.back(), "[DONE]");
  std::string text, finish;
  json usage;
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    json c = json::parse(events[i]);  // every chunk is valid JSON (so valid UTF-8)
    if (c["choices"].empty()) {
      usage = c["usage"];
      continue;
    }
    text += c["choices"][0]["text"].get<std::string>();
    if (!c["choices"][0]["finish_reason"].is_null()) finish = c["choices"][0]["finish_reason"];
  }
  EXPECT_EQ(text, expected);
  EXPECT_EQ(finish, "length");
  EXPECT_EQ(usage["completion_tokens"], 24);
}

TEST_F(ServerTest, chat_stream_starts_with_the_assistant_role) {
  auto s = post(port(), "/v1/chat/completions",
                R"({"messages":[{"role":"user","content":"hi"}],"max_tokens":5,"stream":true,"ignore_eos":true})");
  ASSERT_EQ(s.status, 200);
  auto events = sse_events(s.body);
  ASSERT_GE(events.size(), 3u);
  json first = json::parse(events[0]);
  EXPECT_EQ(first["object"], "chat.completion.chunk");
  EXPECT_EQ(first["choices"][0]["delta"]["role"], "assistant");
  EXPECT_EQ(json::parse(events[events.size() - 2])["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(events.back(), "[DONE]");
}

TEST_F(ServerTest, bad_requests_get_openai_style_4xx) {
  const std::string c = "/v1/completions", ch = "/v1/chat/completions";
  expect_error(post(port(), c, "{\"prompt\": \"x\""), 400);  // malformed JSON
  expect_error(post(port(), c, "[1,2]"), 400);                 // not an object
  expect_error(post(port(), c, R"({"prompt": 5})"), 400);
  expect_error(post(port(), c, R"({"prompt": "x", "max_tokens": "ten"})"), 400);
  expect_error(post(port(), c, R"({"prompt": "x", "temperature": "hot"})"), 400);
  expect_error(post(port(), c, R"({"prompt": "x", "stream": "yes"})"), 400);
  expect_error(post(port(), c, R"({"prompt": "x", "max_tokens": -1})"), 400);
  expect_error(post(port(), c, R"({"prompt": "x", "max_tokens": 1000000000})"), 400);
  expect_error(post(port(), c, R"({"prompt": "x", "max_tokens": 99999999999999999999})"), 400);
  expect_error(post(port(), c, R"({"prompt": "x", "n": 17})"), 400);
  expect_error(post(port(), c, R"({"prompt": "x", "n": 0})"), 400);  // non-negative JSON ints are unsigned
  expect_error(post(port(), c, R"({"prompt": "x", "max_tokens": 0})"), 400);
  expect_error(post(port(), c, R"({"prompt": [1, 99999999]})"), 400);
  expect_error(post(port(), c, R"({"prompt": ""})"), 400);
  EXPECT_NE(expect_error(post(port(), c, R"({"prompt": "x", "logprobs": 2})"), 400).find("not supported"),
            std::string::npos);
  expect_error(post(port(), c, R"({"prompt": "x", "echo": true})"), 400);
  expect_error(post(port(), c, R"({"prompt": "x", "stream_options": {"include_usage": true}})"), 400);
  auto unknown = post(port(), c, R"({"model": "no-such-model", "prompt": "x"})");
  expect_error(unknown, 404);
  EXPECT_EQ(json::parse(unknown.body)["error"]["code"], "model_not_found");
  expect_error(post(port(), ch, R"({"max_tokens": 3})"), 400);
  expect_error(post(port(), ch, R"({"messages": [{"role": "wizard", "content": "x"}]})"), 400);
  expect_error(post(port(), ch, R"({"messages": [{"role": "user", "content": "x"}], "logprobs": true})"), 400);

  // A prompt longer than the context (the test server runs with --max-model-len 256).
  std::string long_prompt;
  for (int i = 0; i < 400; ++i) long_prompt += " hello";
  std::string msg = expect_error(post(port(), c, json{{"prompt", long_prompt}}.dump()), 400);
  EXPECT_NE(msg.find("maximum context length is 256"), std::string::npos) << msg;
  msg = expect_error(post(port(), c, json{{"prompt", "hi"}, {"max_tokens", 256}}.dump()), 400);
  EXPECT_NE(msg.find("maximum context length"), std::string::npos) << msg;

  // Bodies over the 4 MiB limit are refused before they are read.
  expect_error(post(port(), c, std::string(5 << 20, ' ')), 413);
  // Deep nesting is refused before it is parsed.
  expect_error(post(port(), c, std::string(100000, '[')), 400);

  expect_error(get(port(), "/v1/nothing"), 404);
  auto wrong = get(port(), c);
  expect_error(wrong, 405);
  EXPECT_EQ(wrong.headers["Allow"], "POST");
  expect_error(http_call(port(), "POST", "/health", "{}"), 405);
  // The server is still fine.
  EXPECT_EQ(get(port(), "/health").status, 200);
}

TEST_F(ServerTest, metrics_move_after_a_request) {
  auto before = scrape();
  EXPECT_EQ(metric(before, "mpserve_num_requests_running"), 0);
  EXPECT_GE(metric(before, "mpserve_kv_cache_blocks_total"), 1);
  auto r = post(port(), "/v1/completions", R"({"prompt":"count","max_tokens":6,"ignore_eos":true})");
  ASSERT_EQ(r.status, 200);
  // The engine loop refreshes its stats after a step's outputs are delivered, so the response
  // can overtake them by one step.
  ASSERT_TRUE(wait_engine_idle([this] { return scrape(); }));
  auto after = scrape();
  EXPECT_GE(metric(after, "mpserve_generation_tokens_total") - metric(before, "mpserve_generation_tokens_total"), 6);
  EXPECT_GE(metric(after, "mpserve_prompt_tokens_total") - metric(before, "mpserve_prompt_tokens_total"), 1);
  EXPECT_EQ(metric(after, "mpserve_time_to_first_token_seconds_count") -
                metric(before, "mpserve_time_to_first_token_seconds_count"),
            1);
  EXPECT_EQ(metric(after, "mpserve_e2e_request_latency_seconds_count") -
                metric(before, "mpserve_e2e_request_latency_seconds_count"),
            1);
  EXPECT_EQ(metric(after, "mpserve_time_per_output_token_seconds_count") -
                metric(before, "mpserve_time_per_output_token_seconds_count"),
            1);
  EXPECT_GT(metric(after, "mpserve_step_duration_seconds_count"), 0);
  // Present (metric() gives -1 for a missing one) and zero: this engine schedules synchronously.
  EXPECT_EQ(metric(after, "mpserve_async_overlap_seconds_total"), 0);
  EXPECT_EQ(metric(after, "mpserve_async_overlap_last_seconds"), 0);
  std::string length_key = "mpserve_request_success_total{model_name=\"" + model_name() + "\",finished_reason=\"length\"}";
  EXPECT_EQ(after[length_key] - before[length_key], 1);
  EXPECT_EQ(metric(after, "mpserve_num_requests_running"), 0);
  EXPECT_EQ(metric(after, "mpserve_kv_cache_usage_perc"), 0);
  // Histogram buckets are cumulative and end with +Inf == count.
  std::string inf_key = "mpserve_e2e_request_latency_seconds_bucket{model_name=\"" + model_name() + "\",le=\"+Inf\"}";
  EXPECT_EQ(after[inf_key], metric(after, "mpserve_e2e_request_latency_seconds_count"));
}

// Every async step that collects its predecessor spends the injected host time (--step-cpu-us)
// while that predecessor is in flight, so the overlap metrics are at least that time per collect.
TEST(ServerAsync, metrics_report_async_overlap_after_an_async_scheduled_request) {
  constexpr double kStepCpuS = 0.002;
  ServerProcess server({"--async-scheduling", "--step-cpu-us", "2000"});
  ASSERT_TRUE(server.ready()) << "mpserve engine did not print its ready line";
  auto scrape = [&] { return parse_metrics(get(server.port(), "/metrics").body); };
  auto before = scrape();
  EXPECT_EQ(metric(before, "mpserve_async_overlap_seconds_total"), 0);
  auto r = post(server.port(), "/v1/completions", R"({"prompt":"count","max_tokens":6,"ignore_eos":true})");
  ASSERT_EQ(r.status, 200) << r.body;
  ASSERT_TRUE(wait_engine_idle(scrape));
  auto after = scrape();
  EXPECT_GE(metric(after, "mpserve_generation_tokens_total"), 6);
  // 6 tokens: the prefill and at least 5 decode steps are each collected by a later step.
  EXPECT_GE(metric(after, "mpserve_async_overlap_seconds_total"), 6 * kStepCpuS);
  EXPECT_GE(metric(after, "mpserve_async_overlap_last_seconds"), kStepCpuS);
  EXPECT_LE(metric(after, "mpserve_async_overlap_last_seconds"), metric(after, "mpserve_async_overlap_seconds_total"));
}

TEST_F(ServerTest, client_disconnect_mid_stream_aborts_and_frees_kv) {
  auto before = scrape();
  std::string abort_key = "mpserve_request_success_total{model_name=\"" + model_name() + "\",finished_reason=\"abort\"}";
  {
    net::io_context ioc;
    tcp::socket sock(ioc);
    sock.connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), port()));
    std::string body = R"({"prompt":"go","max_tokens":240,"ignore_eos":true,"stream":true})";
    std::string req = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " +
                      std::to_string(body.size()) + "\r\n\r\n" + body;
    net::write(sock, net::buffer(req));
    std::string got;
    char buf[4096];
    while (got.find("\"text\"") == std::string::npos) got.append(buf, sock.read_some(net::buffer(buf)));
    EXPECT_NE(got.find("200 OK"), std::string::npos) << got;
    auto mid = scrape();
    for (int i = 0; i < 200 && metric(mid, "mpserve_kv_cache_blocks_used") <= 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));  // the loop's stats lag a step
      mid = scrape();
    }
    EXPECT_EQ(metric(mid, "mpserve_num_requests_running") + metric(mid, "mpserve_num_requests_waiting"), 1);
    EXPECT_GT(metric(mid, "mpserve_kv_cache_blocks_used"), 0);
  }  // the socket closes here
  EXPECT_TRUE(wait_engine_idle([this] { return scrape(); }));
  auto after = scrape();
  EXPECT_EQ(after[abort_key] - before[abort_key], 1);
  EXPECT_LT(metric(after, "mpserve_generation_tokens_total") - metric(before, "mpserve_generation_tokens_total"), 240);
}

TEST_F(ServerTest, client_disconnect_while_waiting_for_a_plain_response_aborts) {
  auto before = scrape();
  std::string abort_key = "mpserve_request_success_total{model_name=\"" + model_name() + "\",finished_reason=\"abort\"}";
  {
    net::io_context ioc;
    tcp::socket sock(ioc);
    sock.connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), port()));
    std::string body = R"({"prompt":"go","max_tokens":240,"ignore_eos":true})";
    std::string req = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " +
                      std::to_string(body.size()) + "\r\n\r\n" + body;
    net::write(sock, net::buffer(req));
    for (int i = 0; i < 200 && metric(scrape(), "mpserve_num_requests_running") < 1; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }
  EXPECT_TRUE(wait_engine_idle([this] { return scrape(); }));
  EXPECT_EQ(scrape()[abort_key] - before[abort_key], 1);
}

TEST_F(ServerTest, keep_alive_connection_serves_several_requests) {
  net::io_context ioc;
  beast::tcp_stream stream(ioc);
  stream.connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), port()));
  beast::flat_buffer buffer;
  for (int i = 0; i < 3; ++i) {
    http::request<http::string_body> req(http::verb::post, "/v1/completions", 11);
    req.set(http::field::host, "x");
    req.body() = R"({"prompt":"again","max_tokens":2,"ignore_eos":true})";
    req.prepare_payload();
    http::write(stream, req);
    http::response<http::string_body> res;
    http::read(stream, buffer, res);
    EXPECT_EQ(res.result_int(), 200u);
    EXPECT_TRUE(res.keep_alive());
  }
}

TEST(ServerLifecycle, sigterm_lets_an_in_flight_request_finish_then_exits_zero) {
  ServerProcess server;
  ASSERT_TRUE(server.ready());
  uint16_t port = server.port();
  auto fut = std::async(std::launch::async, [port] {
    return post(port, "/v1/completions", R"({"prompt":"drain","max_tokens":60,"ignore_eos":true})");
  });
  for (int i = 0; i < 500; ++i) {
    if (metric(parse_metrics(get(port, "/metrics").body), "mpserve_num_requests_running") >= 1) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  int code = server.signal_and_wait(SIGTERM, std::chrono::seconds(30));
  EXPECT_EQ(code, 0);
  HttpResult r = fut.get();
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(nlohmann::json::parse(r.body)["usage"]["completion_tokens"], 60);
  // Nothing listens any more.
  EXPECT_THROW(get(port, "/health"), std::exception);
}

TEST(ServerLifecycle, sigterm_past_the_drain_deadline_aborts_with_an_error_then_exits_zero) {
  ServerProcess server({"--drain-timeout", "0"});
  ASSERT_TRUE(server.ready());
  uint16_t port = server.port();
  auto fut = std::async(std::launch::async, [port] {
    return post(port, "/v1/completions", R"({"prompt":"drain","max_tokens":240,"ignore_eos":true})");
  });
  for (int i = 0; i < 500; ++i) {
    if (metric(parse_metrics(get(port, "/metrics").body), "mpserve_num_requests_running") >= 1) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  EXPECT_EQ(server.signal_and_wait(SIGINT, std::chrono::seconds(30)), 0);
  HttpResult r = fut.get();
  expect_error(r, 503);
}

TEST(ServerLifecycle, full_waiting_queue_gets_429_with_retry_after) {
  ServerProcess server({"--max-waiting", "1"});  // and --max-num-seqs 8 from ServerProcess
  ASSERT_TRUE(server.ready());
  uint16_t port = server.port();
  std::vector<std::future<HttpResult>> futs;
  for (int i = 0; i < 16; ++i) {
    futs.push_back(std::async(std::launch::async, [port] {
      return post(port, "/v1/completions", R"({"prompt":"queue","max_tokens":120,"ignore_eos":true})");
    }));
  }
  int ok = 0, overloaded = 0;
  for (auto& f : futs) {
    HttpResult r = f.get();
    if (r.status == 200) {
      ++ok;
    } else {
      expect_error(r, 429);
      EXPECT_EQ(r.headers["Retry-After"], "1");
      ++overloaded;
    }
  }
  EXPECT_GE(ok, 1);
  EXPECT_GE(overloaded, 1);  // 8 running + 1 waiting at most: 16 at once cannot all be queued
  EXPECT_EQ(ok + overloaded, 16);
}

}  // namespace
}  // namespace mpserve::testing
