// `mpserve bench serve` as a command: the JSON file, the summary line, exit codes.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include <nlohmann/json.hpp>

#include "bench/fake_openai_server.h"
#include "cli/cli_test_util.h"

namespace mpserve::testing {
namespace {

TEST(BenchServeCli, json_file_holds_options_and_results) {
  FakeOpenAiServer srv(FakeMode::kOk);
  auto path = std::filesystem::temp_directory_path() / ("bench-serve-" + std::to_string(::getpid()) + ".json");
  auto r = run_mpserve("bench serve --base-url " + srv.url() +
                       " --num-requests 6 --concurrency 2 --input-len 8 --output-len 4 --seed 3 --json " +
                       path.string());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("bench_serve: model=fake-model completed=6 failed=0"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("TTFT"), std::string::npos) << r.out;
  auto j = nlohmann::json::parse(read_all(path), nullptr, false);
  std::filesystem::remove(path);
  ASSERT_TRUE(j.is_object());
  EXPECT_EQ(j["options"]["input_len"], 8);
  EXPECT_EQ(j["options"]["output_len"], 4);
  EXPECT_EQ(j["options"]["concurrency"], 2);
  EXPECT_EQ(j["options"]["seed"], 3);
  EXPECT_EQ(j["options"]["mode"], "count");
  EXPECT_EQ(j["options"]["load"], "closed");
  const auto& res = j["results"];
  EXPECT_EQ(res["model"], "fake-model");
  EXPECT_EQ(res["completed"], 6);
  EXPECT_EQ(res["failed"], 0);
  EXPECT_EQ(res["output_tokens"], 24);
  EXPECT_EQ(res["input_tokens"], 48);
  for (const char* k : {"ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"}) {
    ASSERT_TRUE(res[k].is_object()) << k;
    for (const char* f : {"count", "mean", "p50", "p90", "p99", "max"}) EXPECT_TRUE(res[k][f].is_number()) << k << "." << f;
  }
  EXPECT_GT(res["output_throughput"].get<double>(), 0);
  EXPECT_TRUE(res["first_errors"].is_array());
}

TEST(BenchServeCli, bad_flag_values_exit_2_with_a_message) {
  for (const char* args : {"--concurrency 0", "--warmup 1", "--num-requests 0", "--output-len 0",
                           "--duration 2 --num-requests 5", "--timeout 0", "--request-rate -1",
                           "--prompts-file /nonexistent/prompts.txt"}) {
    auto r = run_mpserve(std::string("bench serve --base-url http://127.0.0.1:1 ") + args);
    EXPECT_EQ(r.exit_code, 2) << args << ": " << r.err;
    EXPECT_NE(r.err.find("mpserve bench serve: --"), std::string::npos) << args << ": " << r.err;
  }
  // Flags CLI11 itself rejects (unknown, not a number) exit non-zero with its own message.
  EXPECT_NE(run_mpserve("bench serve --frobnicate").exit_code, 0);
  EXPECT_NE(run_mpserve("bench serve --concurrency lots").exit_code, 0);
}

TEST(BenchServeCli, unreachable_endpoint_exits_1) {
  boost::asio::io_context ioc;
  int port;
  {
    boost::asio::ip::tcp::acceptor a(ioc, {boost::asio::ip::make_address("127.0.0.1"), 0});
    port = a.local_endpoint().port();
  }
  auto r = run_mpserve("bench serve --num-requests 2 --base-url http://127.0.0.1:" + std::to_string(port));
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("cannot reach"), std::string::npos) << r.err;
}

TEST(BenchServeCli, a_run_where_every_request_failed_reports_them_and_exits_1) {
  FakeOpenAiServer srv(FakeMode::kHttp500);
  auto r = run_mpserve("bench serve --num-requests 3 --concurrency 1 --base-url " + srv.url());
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("no request completed"), std::string::npos) << r.err;
  EXPECT_NE(r.out.find("completed=0 failed=3"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("HTTP 500"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace mpserve::testing
