// run_serve_bench against a real `mpserve engine --device cpu` (the embedded tiny model) on
// loopback, and against scripted fake servers for the failure paths.
#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <string>

#include "bench/random_load.h"
#include "bench/serve_bench.h"
#include "bench/fake_openai_server.h"
#include "server/server_test_util.h"

namespace mpserve::bench {
namespace {

using testing::FakeMode;
using testing::FakeOpenAiServer;

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// A loopback port with nothing listening on it.
int dead_port() {
  boost::asio::io_context ioc;
  boost::asio::ip::tcp::acceptor a(ioc, {boost::asio::ip::make_address("127.0.0.1"), 0});
  return a.local_endpoint().port();  // closed when `a` goes away
}

void expect_ordered(const LatencyStats& s, const char* name) {
  EXPECT_GT(s.count, 0) << name;
  EXPECT_GT(s.p50, 0) << name;
  EXPECT_LE(s.p50, s.p90) << name;
  EXPECT_LE(s.p90, s.p99) << name;
  EXPECT_LE(s.p99, s.max) << name;
  EXPECT_GT(s.mean, 0) << name;
  EXPECT_LE(s.mean, s.max) << name;
}

ServeBenchOptions small(const std::string& url) {
  ServeBenchOptions o;
  o.base_url = url;
  o.input_len = 16;
  o.output_len = 8;
  o.num_requests = 12;
  o.concurrency = 4;
  o.seed = 1;
  o.request_timeout_s = 60;
  o.progress = false;
  return o;
}

class ServeBenchEngine : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    engine_ = new testing::ServerProcess({"--device", "cpu"});
  }
  static void TearDownTestSuite() {
    delete engine_;
    engine_ = nullptr;
  }
  void SetUp() override { ASSERT_TRUE(engine_->ready()) << "mpserve engine did not start"; }
  static std::string url() { return "http://127.0.0.1:" + std::to_string(engine_->port()); }
  static testing::ServerProcess* engine_;
};
testing::ServerProcess* ServeBenchEngine::engine_ = nullptr;

TEST_F(ServeBenchEngine, closed_loop_counts_every_request_and_token) {
  ServeBenchOptions o = small(url());
  auto r = run_serve_bench(o, stderr);
  ASSERT_TRUE(r) << r.error();
  for (const auto& e : r->first_errors) ADD_FAILURE() << e;
  EXPECT_FALSE(r->model.empty());  // from GET /v1/models
  EXPECT_EQ(r->completed, 12);
  EXPECT_EQ(r->failed, 0);
  EXPECT_EQ(r->short_outputs, 0);
  EXPECT_EQ(r->issued, 12);
  EXPECT_EQ(r->input_tokens, 12 * 16);
  EXPECT_EQ(r->output_tokens, 12 * 8);
  EXPECT_GT(r->elapsed_s, 0);
  EXPECT_NEAR(r->output_throughput, 96 / r->elapsed_s, 1e-6);
  EXPECT_NEAR(r->input_throughput, 192 / r->elapsed_s, 1e-6);
  EXPECT_NEAR(r->request_throughput, 12 / r->elapsed_s, 1e-9);
  expect_ordered(r->ttft, "ttft");
  expect_ordered(r->tpot, "tpot");
  expect_ordered(r->itl, "itl");
  expect_ordered(r->e2e, "e2e");
  EXPECT_EQ(r->ttft.count, 12);
  EXPECT_EQ(r->e2e.count, 12);
  EXPECT_LE(r->itl.count, 12 * 7);
  EXPECT_LT(r->ttft.p50, r->e2e.p50);
  EXPECT_LT(r->ttft.max, r->e2e.max);
  EXPECT_LE(r->e2e.max, r->elapsed_s * 1000);
}

TEST_F(ServeBenchEngine, open_loop_issues_poisson_arrivals_on_the_seeded_schedule) {
  ServeBenchOptions o = small(url());
  o.num_requests = 16;
  o.request_rate = 20;
  o.concurrency = 0;  // no cap: every arrival goes out on schedule
  o.seed = 7;
  o.output_len = 4;
  auto r = run_serve_bench(o, stderr);
  ASSERT_TRUE(r) << r.error();
  EXPECT_EQ(r->issued, 16);
  EXPECT_EQ(r->completed, 16);
  EXPECT_EQ(r->failed, 0);
  // The schedule: first request at once, then 15 exponential gaps of the seeded generator.
  PoissonArrivals gaps(20, 7);
  double scheduled = 0;
  for (int i = 0; i < 15; ++i) scheduled += gaps.next_gap_s();
  EXPECT_GT(scheduled, 15.0 / 20 * 0.3);  // mean 0.75 s; loose, it is one draw
  EXPECT_LT(scheduled, 15.0 / 20 * 2.5);
  // Timers never fire early; a late one only delays by scheduling noise.
  EXPECT_GE(r->issue_span_s, scheduled - 1e-3);
  EXPECT_LT(r->issue_span_s, scheduled + 0.5);
}

TEST_F(ServeBenchEngine, window_mode_counts_only_tokens_inside_the_window) {
  ServeBenchOptions o = small(url());
  o.warmup_s = 1;
  o.duration_s = 2;
  o.output_len = 8;
  auto t0 = std::chrono::steady_clock::now();
  auto r = run_serve_bench(o, stderr);
  double wall = seconds_since(t0);
  ASSERT_TRUE(r) << r.error();
  for (const auto& e : r->first_errors) ADD_FAILURE() << e;
  // The run stops at the window's end: in-flight requests are cancelled, not waited for.
  EXPECT_GE(wall, 3.0);
  EXPECT_LT(wall, 3.0 + 2.0);
  EXPECT_DOUBLE_EQ(r->elapsed_s, 2.0);
  EXPECT_EQ(r->failed, 0);
  EXPECT_GT(r->completed, 0);
  EXPECT_LE(r->cancelled, 4);
  EXPECT_GT(r->issued, r->completed);  // warmup requests and the cancelled ones are not counted
  EXPECT_NEAR(r->output_throughput, static_cast<double>(r->output_tokens) / 2.0, 1e-9);
  EXPECT_NEAR(r->input_throughput, static_cast<double>(r->input_tokens) / 2.0, 1e-9);
  EXPECT_NEAR(r->request_throughput, static_cast<double>(r->completed) / 2.0, 1e-9);
  // Tokens in the window: the completed requests' tokens, give or take the requests that straddle
  // either edge (at most `concurrency` at each, 8 tokens each).
  EXPECT_NEAR(static_cast<double>(r->output_tokens), static_cast<double>(r->completed * 8), 2 * 4 * 8);
  EXPECT_EQ(r->input_tokens % 16, 0);
  // Everything issued was either counted, cancelled or ended outside the window.
  EXPECT_LE(r->completed + r->cancelled, r->issued);
  EXPECT_LE(r->e2e.max, 2000.0);  // started and ended inside the window (0 when none did)
}

TEST(ServeBench, nothing_listening_is_an_error_at_start_not_a_hang) {
  ServeBenchOptions o = small("http://127.0.0.1:" + std::to_string(dead_port()));
  auto t0 = std::chrono::steady_clock::now();
  auto r = run_serve_bench(o, nullptr);
  EXPECT_LT(seconds_since(t0), 5.0);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().find("cannot reach"), std::string::npos) << r.error();
}

TEST(ServeBench, bad_options_are_rejected_before_any_request) {
  ServeBenchOptions o = small("http://127.0.0.1:1");
  o.concurrency = 0;
  EXPECT_FALSE(run_serve_bench(o, nullptr));
  o = small("http://127.0.0.1:1");
  o.warmup_s = 1;
  EXPECT_FALSE(run_serve_bench(o, nullptr));
  o = small("ftp://127.0.0.1:1");
  EXPECT_FALSE(run_serve_bench(o, nullptr));
}

Result<ServeBenchResult> run_against(FakeOpenAiServer& srv, ServeBenchOptions o) {
  o.base_url = srv.url();
  return run_serve_bench(o, nullptr);
}

TEST(ServeBench, http_500_replies_are_failures_with_the_server_message) {
  FakeOpenAiServer srv(FakeMode::kHttp500);
  auto r = run_against(srv, small(""));
  ASSERT_TRUE(r) << r.error();
  EXPECT_EQ(r->model, "fake-model");
  EXPECT_EQ(r->completed, 0);
  EXPECT_EQ(r->failed, 12);
  EXPECT_EQ(r->output_tokens, 0);
  ASSERT_EQ(r->first_errors.size(), 5u);
  EXPECT_NE(r->first_errors[0].find("HTTP 500: the fake engine is broken"), std::string::npos) << r->first_errors[0];
  EXPECT_EQ(r->ttft.count, 0);
  EXPECT_EQ(srv.completions(), 12);
}

TEST(ServeBench, a_stream_cut_off_mid_way_is_a_failure) {
  FakeOpenAiServer srv(FakeMode::kCloseMidStream);
  ServeBenchOptions o = small("");
  o.num_requests = 6;
  auto r = run_against(srv, o);
  ASSERT_TRUE(r) << r.error();
  EXPECT_EQ(r->completed, 0);
  EXPECT_EQ(r->failed, 6);
  EXPECT_EQ(r->output_tokens, 0);  // a failed request's tokens are not throughput
  ASSERT_FALSE(r->first_errors.empty());
  EXPECT_NE(r->first_errors[0].find("after 2 token events"), std::string::npos) << r->first_errors[0];
}

TEST(ServeBench, an_error_event_in_the_stream_is_a_failure) {
  FakeOpenAiServer srv(FakeMode::kErrorEvent);
  auto r = run_against(srv, small(""));
  ASSERT_TRUE(r) << r.error();
  EXPECT_EQ(r->failed, 12);
  ASSERT_FALSE(r->first_errors.empty());
  EXPECT_NE(r->first_errors[0].find("error event: boom"), std::string::npos) << r->first_errors[0];
}

TEST(ServeBench, crlf_events_split_across_writes_are_parsed_and_usage_wins) {
  FakeOpenAiServer srv(FakeMode::kSplitCrlf);
  ServeBenchOptions o = small("");
  o.output_len = 5;
  auto r = run_against(srv, o);
  ASSERT_TRUE(r) << r.error();
  for (const auto& e : r->first_errors) ADD_FAILURE() << e;
  EXPECT_EQ(r->completed, 12);
  EXPECT_EQ(r->output_tokens, 12 * 10);  // usage says 2 tokens per event
  EXPECT_EQ(r->input_tokens, 12 * 16);
  EXPECT_EQ(r->itl.count, 12 * 4);       // gaps between the 5 token events
  // Keep-alive: far fewer connections than requests (the probe takes one of its own).
  EXPECT_LE(srv.connections(), 1 + 4);
}

TEST(ServeBench, without_usage_tokens_are_counted_from_the_stream) {
  FakeOpenAiServer srv(FakeMode::kNoUsage);
  auto r = run_against(srv, small(""));
  ASSERT_TRUE(r) << r.error();
  EXPECT_EQ(r->completed, 12);
  EXPECT_EQ(r->output_tokens, 12 * 8);
  EXPECT_EQ(r->input_tokens, 12 * 16);  // what was sent
}

TEST(ServeBench, short_outputs_are_completed_and_reported_or_failed_when_strict) {
  FakeOpenAiServer srv(FakeMode::kShort);
  auto r = run_against(srv, small(""));
  ASSERT_TRUE(r) << r.error();
  EXPECT_EQ(r->completed, 12);
  EXPECT_EQ(r->failed, 0);
  EXPECT_EQ(r->short_outputs, 12);
  EXPECT_EQ(r->output_tokens, 12 * 3);
  ServeBenchOptions strict = small("");
  strict.strict_output_len = true;
  auto s = run_against(srv, strict);
  ASSERT_TRUE(s) << s.error();
  EXPECT_EQ(s->completed, 0);
  EXPECT_EQ(s->failed, 12);
  EXPECT_EQ(s->short_outputs, 12);
  ASSERT_FALSE(s->first_errors.empty());
  EXPECT_NE(s->first_errors[0].find("short output: 3 of 8"), std::string::npos) << s->first_errors[0];
}

TEST(ServeBench, a_silent_server_times_out_per_request) {
  FakeOpenAiServer srv(FakeMode::kStall);
  ServeBenchOptions o = small("");
  o.num_requests = 4;
  o.concurrency = 4;
  o.request_timeout_s = 0.5;
  auto t0 = std::chrono::steady_clock::now();
  auto r = run_against(srv, o);
  EXPECT_LT(seconds_since(t0), 3.0);
  ASSERT_TRUE(r) << r.error();
  EXPECT_EQ(r->failed, 4);
  ASSERT_FALSE(r->first_errors.empty());
  EXPECT_NE(r->first_errors[0].find("timed out"), std::string::npos) << r->first_errors[0];
}

TEST(ServeBench, window_mode_against_a_dead_stream_stops_on_time) {
  FakeOpenAiServer srv(FakeMode::kStall);
  ServeBenchOptions o = small("");
  o.duration_s = 1;
  o.concurrency = 3;
  auto t0 = std::chrono::steady_clock::now();
  auto r = run_against(srv, o);
  EXPECT_LT(seconds_since(t0), 3.0);
  ASSERT_TRUE(r) << r.error();
  EXPECT_EQ(r->completed, 0);
  EXPECT_EQ(r->failed, 0);
  EXPECT_EQ(r->cancelled, 3);
  EXPECT_EQ(r->output_tokens, 0);
}

}  // namespace
}  // namespace mpserve::bench
