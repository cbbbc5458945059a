// The router in this process in front of real fake-engine processes on loopback: proxying (streaming
// and not), retry before the first byte, an explicit error event mid-stream, health checks, holding.
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "fakes/test_http.h"
#include "router/engine_pool.h"
#include "router/router.h"

namespace mpserve::router {
namespace {

using mpserve::testing::Child;
using mpserve::testing::http_get;
using mpserve::testing::http_request;
using mpserve::testing::parse_stream;
using mpserve::testing::read_text;
using mpserve::testing::TempDir;
using mpserve::testing::wait_until;

// A fake engine process; its port is read back from the file it writes once listening.
struct FakeEngine {
  FakeEngine(const TempDir& dir, const std::string& name, std::vector<std::string> extra = {}) {
    port_file = dir.path() / (name + ".port");
    std::vector<std::string> argv{MPSERVE_FAKE_ENGINE, "--port", "0", "--name", name, "--port-file", port_file.string()};
    argv.insert(argv.end(), extra.begin(), extra.end());
    child = std::make_unique<Child>(argv, (dir.path() / (name + ".log")).string());
    EXPECT_TRUE(wait_until([&] { return std::filesystem::exists(port_file); }, std::chrono::seconds(10)));
    port = std::stoi(read_text(port_file));
  }
  std::filesystem::path port_file;
  std::unique_ptr<Child> child;
  int port = 0;
};

struct Fixture {
  Fixture(PolicyKind kind, RouterOptions ro = {}) : options(ro) {
    options.port = 0;
    options.health_interval = std::chrono::milliseconds(100);
    policy = kind;
  }
  void start(const std::vector<FakeEngine*>& engines) {
    for (auto* e : engines) pool.add({"127.0.0.1", e->port});
    router = std::make_unique<Router>(options, pool, policy);
    ASSERT_TRUE(router->start().is_ok());
    ASSERT_TRUE(wait_until([&] { return pool.available_count() == engines.size(); }, std::chrono::seconds(10)));
  }
  RouterOptions options;
  PolicyKind policy;
  EnginePool pool;
  std::unique_ptr<Router> router;
};

std::string engine_of(const std::string& body) { return nlohmann::json::parse(body).value("engine", ""); }

TEST(RouterProxy, round_robin_proxies_plain_and_streaming_requests_over_three_engines) {
  TempDir dir("router-rr");
  FakeEngine a(dir, "a"), b(dir, "b"), c(dir, "c");
  Fixture f(PolicyKind::kRoundRobin);
  f.start({&a, &b, &c});
  int port = f.router->port();
  std::map<std::string, int> count;
  for (int i = 0; i < 30; ++i) {
    auto r = http_request(port, "POST", "/v1/completions", R"({"prompt":"hi","max_tokens":4})");
    ASSERT_EQ(r.status, 200) << r.body << r.error;
    count[engine_of(r.body)]++;
  }
  EXPECT_EQ(count["a"], 10);
  EXPECT_EQ(count["b"], 10);
  EXPECT_EQ(count["c"], 10);
  auto s = http_request(port, "POST", "/v1/chat/completions",
                        R"({"messages":[{"role":"user","content":"hi"}],"stream":true})");
  ASSERT_EQ(s.status, 200);
  auto o = parse_stream(s.body);
  EXPECT_EQ(o.events, 4);
  EXPECT_TRUE(o.done);
  EXPECT_FALSE(o.error);
  auto admin = nlohmann::json::parse(http_get(port, "/admin/engines").body);
  ASSERT_EQ(admin["engines"].size(), 3u);
  EXPECT_EQ(admin["engines"][0]["state"], "healthy");
  EXPECT_EQ(admin["engines"][0]["outstanding_requests"], 0);
  std::string metrics = http_get(port, "/metrics").body;
  EXPECT_NE(metrics.find("mpserve_router_engine_attempts_total 31"), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("mpserve_router_engines_available 3"), std::string::npos);
  EXPECT_EQ(http_get(port, "/nope").status, 404);
  EXPECT_EQ(http_request(port, "POST", "/v1/completions", "{not json").status, 400);
}

TEST(RouterProxy, request_that_fails_before_any_byte_is_retried_on_another_engine) {
  TempDir dir("router-retry");
  // "bad" crashes on its first request (plain: before replying; streaming: after one event).
  FakeEngine bad(dir, "bad", {"--fail-after", "0"}), good(dir, "good");
  Fixture f(PolicyKind::kRoundRobin);
  f.start({&bad, &good});
  auto r1 = http_request(f.router->port(), "POST", "/v1/completions", R"({"prompt":"x"})");
  auto r2 = http_request(f.router->port(), "POST", "/v1/completions", R"({"prompt":"y"})");
  EXPECT_EQ(r1.status, 200);
  EXPECT_EQ(r2.status, 200);
  EXPECT_EQ(engine_of(r1.body), "good");
  EXPECT_EQ(engine_of(r2.body), "good");
  auto admin = f.pool.admin_json();
  EXPECT_EQ(admin["engines"][0]["failed_before_bytes_total"], 1);
  EXPECT_GE(admin["retries_total"], 1);
}

TEST(RouterProxy, stream_broken_mid_way_ends_with_an_error_event_not_a_silent_truncation) {
  TempDir dir("router-mid");
  FakeEngine bad(dir, "bad", {"--fail-after", "0", "--delay-ms", "20"});
  Fixture f(PolicyKind::kRoundRobin);
  f.start({&bad});
  auto r = http_request(f.router->port(), "POST", "/v1/completions", R"({"prompt":"x","stream":true})");
  EXPECT_EQ(r.status, 200);
  EXPECT_TRUE(r.error.empty()) << "the HTTP reply itself must end properly: " << r.error;
  auto o = parse_stream(r.body);
  EXPECT_EQ(o.events, 1);
  EXPECT_TRUE(o.error) << r.body;
  EXPECT_FALSE(o.done);
  EXPECT_NE(r.body.find("failed mid-stream"), std::string::npos) << r.body;
  EXPECT_EQ(f.pool.admin_json()["engines"][0]["failed_mid_stream_total"], 1);
}

TEST(RouterProxy, health_checks_take_an_engine_out_of_rotation_and_back) {
  TempDir dir("router-health");
  auto sick = dir.path() / "sick";
  FakeEngine a(dir, "a", {"--unhealthy-file", sick.string()}), b(dir, "b");
  Fixture f(PolicyKind::kRoundRobin);
  f.start({&a, &b});
  std::ofstream(sick) << "x";
  ASSERT_TRUE(wait_until([&] { return f.pool.available_count() == 1; }, std::chrono::seconds(5)));
  for (int i = 0; i < 6; ++i) {
    auto r = http_request(f.router->port(), "POST", "/v1/completions", R"({"prompt":"x"})");
    EXPECT_EQ(engine_of(r.body), "b");
  }
  std::filesystem::remove(sick);
  ASSERT_TRUE(wait_until([&] { return f.pool.available_count() == 2; }, std::chrono::seconds(5)));
  std::map<std::string, int> count;
  for (int i = 0; i < 6; ++i) count[engine_of(http_request(f.router->port(), "POST", "/v1/completions", R"({"prompt":"x"})").body)]++;
  EXPECT_EQ(count["a"], 3);
  EXPECT_EQ(count["b"], 3);
}

TEST(RouterProxy, request_is_held_while_no_engine_is_up_and_served_when_one_returns) {
  TempDir dir("router-hold");
  FakeEngine a(dir, "a");
  Fixture f(PolicyKind::kLeastRequests);
  f.start({&a});
  f.pool.set_managed(0, "recovering", -1);  // what the supervisor does during an MPS recovery
  std::thread back([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    f.pool.set_managed(0, "running", a.child->pid());
  });
  auto t0 = std::chrono::steady_clock::now();
  auto r = http_request(f.router->port(), "POST", "/v1/completions", R"({"prompt":"x"})");
  auto waited = std::chrono::steady_clock::now() - t0;
  back.join();
  EXPECT_EQ(r.status, 200);
  EXPECT_GE(waited, std::chrono::milliseconds(450));
  // With nothing coming back, the hold ends in a 503 that says why.
  f.pool.set_managed(0, "recovering", -1);
  f.router->stop();
  RouterOptions quick;
  quick.port = 0;
  quick.hold_timeout = std::chrono::milliseconds(300);
  Router r2(quick, f.pool, PolicyKind::kRoundRobin);
  ASSERT_TRUE(r2.start().is_ok());
  auto late = http_request(r2.port(), "POST", "/v1/completions", R"({"prompt":"x"})");
  EXPECT_EQ(late.status, 503);
  EXPECT_NE(late.body.find("no engine"), std::string::npos);
  EXPECT_EQ(http_get(r2.port(), "/health").status, 503);
}

}  // namespace
}  // namespace mpserve::router
