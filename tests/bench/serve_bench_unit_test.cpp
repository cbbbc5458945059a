// The load generator's pure parts: percentiles, the SSE parser, stream-event accounting, URL
// parsing and the seeded randomness (prompts, Poisson gaps).
#include <gtest/gtest.h>

#include <numeric>
#include <string>
#include <vector>

#include "bench/http_stream.h"
#include "bench/latency_stats.h"
#include "bench/load_runner.h"
#include "bench/random_load.h"
#include "bench/sse_parser.h"

namespace mpserve::bench {
namespace {

TEST(ServeBenchUnit, percentile_interpolates_between_ranks_like_numpy) {
  std::vector<double> v = {1, 2, 3, 4};
  EXPECT_DOUBLE_EQ(percentile(v, 0), 1);
  EXPECT_DOUBLE_EQ(percentile(v, 50), 2.5);
  EXPECT_DOUBLE_EQ(percentile(v, 90), 3.7);
  EXPECT_DOUBLE_EQ(percentile(v, 100), 4);
  EXPECT_DOUBLE_EQ(percentile({7}, 99), 7);
  EXPECT_DOUBLE_EQ(percentile({}, 50), 0);
  std::vector<double> hundred(101);
  std::iota(hundred.begin(), hundred.end(), 0.0);
  EXPECT_DOUBLE_EQ(percentile(hundred, 99), 99);
}

TEST(ServeBenchUnit, summarize_sorts_and_orders_its_percentiles) {
  std::vector<double> v = {9, 1, 5, 3, 7, 2, 8, 4, 6, 10};
  LatencyStats s = summarize(v);
  EXPECT_EQ(s.count, 10);
  EXPECT_DOUBLE_EQ(s.mean, 5.5);
  EXPECT_DOUBLE_EQ(s.p50, 5.5);
  EXPECT_DOUBLE_EQ(s.max, 10);
  EXPECT_LE(s.p50, s.p90);
  EXPECT_LE(s.p90, s.p99);
  EXPECT_LE(s.p99, s.max);
  std::vector<double> empty;
  EXPECT_EQ(summarize(empty).count, 0);
}

std::vector<std::string> parse_in_pieces(const std::string& stream, size_t piece, bool finish = false) {
  SseParser p;
  std::vector<std::string> out;
  auto on = [&](std::string_view d) { out.emplace_back(d); };
  for (size_t i = 0; i < stream.size(); i += piece) p.feed(std::string_view(stream).substr(i, piece), on);
  if (finish) p.finish(on);
  return out;
}

TEST(ServeBenchUnit, sse_parser_yields_the_same_events_however_the_bytes_are_split) {
  const std::string stream =
      ": keepalive\r\n\r\n"
      "data: {\"a\":1}\r\n\r\n"
      "data:{\"b\":2}\n\n"
      ":ping\n"
      "event: message\nid: 7\ndata: {\"c\":3}\r\r"
      "data: line1\ndata: line2\n\n"
      "data: [DONE]\n\n";
  const std::vector<std::string> want = {"{\"a\":1}", "{\"b\":2}", "{\"c\":3}", "line1\nline2", "[DONE]"};
  for (size_t piece = 1; piece <= stream.size(); ++piece) {
    EXPECT_EQ(parse_in_pieces(stream, piece), want) << "piece size " << piece;
  }
}

TEST(ServeBenchUnit, sse_parser_holds_an_unterminated_event_until_finish) {
  SseParser p;
  std::vector<std::string> out;
  auto on = [&](std::string_view d) { out.emplace_back(d); };
  p.feed("data: {\"x\":1}\n\ndata: [DONE]\n", on);
  EXPECT_EQ(out, std::vector<std::string>{"{\"x\":1}"});
  EXPECT_GT(p.pending_bytes(), 0u);
  p.finish(on);
  EXPECT_EQ(out, (std::vector<std::string>{"{\"x\":1}", "[DONE]"}));
  // A line cut off mid-way at the end of the stream is not an event.
  SseParser q;
  std::vector<std::string> none;
  q.feed("data: {\"trunc", [&](std::string_view d) { none.emplace_back(d); });
  q.finish([&](std::string_view d) { none.emplace_back(d); });
  EXPECT_TRUE(none.empty());
}

TEST(ServeBenchUnit, stream_events_count_tokens_usage_errors_and_done) {
  RequestRecord rec;
  bool done = false;
  auto t = Clock::now();
  apply_stream_event(R"({"choices":[{"index":0,"text":"hi"}]})", t, &rec, &done);
  apply_stream_event(R"({"choices":[{"index":0,"text":""}]})", t, &rec, &done);  // a chunk, even empty
  apply_stream_event(R"({"choices":[],"usage":{"prompt_tokens":16,"completion_tokens":5}})", t, &rec, &done);
  EXPECT_EQ(rec.token_events.size(), 2u);
  EXPECT_EQ(rec.prompt_tokens, 16);
  EXPECT_EQ(rec.completion_tokens, 5);
  EXPECT_EQ(rec.output_tokens(), 5);
  EXPECT_TRUE(rec.error.empty());
  apply_stream_event("[DONE]", t, &rec, &done);
  EXPECT_TRUE(done);
  apply_stream_event(R"({"choices":[{"text":"late"}]})", t, &rec, &done);  // after [DONE]: ignored
  EXPECT_EQ(rec.token_events.size(), 2u);

  RequestRecord bad;
  bool d2 = false;
  apply_stream_event(R"({"error":{"message":"engine died","code":502}})", t, &bad, &d2);
  EXPECT_NE(bad.error.find("engine died"), std::string::npos) << bad.error;
  RequestRecord garbled;
  apply_stream_event("{not json", t, &garbled, &d2);
  EXPECT_NE(garbled.error.find("unparseable"), std::string::npos) << garbled.error;
  RequestRecord no_usage;
  apply_stream_event(R"({"choices":[{"text":"a"}]})", t, &no_usage, &d2);
  EXPECT_EQ(no_usage.output_tokens(), 1);  // counted from the stream
}

TEST(ServeBenchUnit, base_url_takes_host_port_and_prefix_and_drops_v1) {
  auto a = parse_base_url("http://127.0.0.1:8000");
  ASSERT_TRUE(a) << a.error();
  EXPECT_EQ(a->host, "127.0.0.1");
  EXPECT_EQ(a->port, 8000);
  EXPECT_EQ(a->base_path, "");
  auto b = parse_base_url("http://example.com/proxy/v1/");
  ASSERT_TRUE(b) << b.error();
  EXPECT_EQ(b->port, 80);
  EXPECT_EQ(b->base_path, "/proxy");
  auto c = parse_base_url("http://[::1]:9000/v1");
  ASSERT_TRUE(c) << c.error();
  EXPECT_EQ(c->host, "::1");
  EXPECT_EQ(c->port, 9000);
  EXPECT_FALSE(parse_base_url("https://x:1"));
  EXPECT_FALSE(parse_base_url("127.0.0.1:8000"));
  EXPECT_FALSE(parse_base_url("http://x:99999"));
  EXPECT_FALSE(parse_base_url("http://x:port"));
}

TEST(ServeBenchUnit, poisson_gaps_are_seeded_and_average_one_over_the_rate) {
  PoissonArrivals a(4.0, 42), b(4.0, 42), c(4.0, 43);
  double sum = 0;
  bool differs = false;
  const int n = 20000;
  for (int i = 0; i < n; ++i) {
    double g = a.next_gap_s();
    EXPECT_EQ(g, b.next_gap_s());
    if (g != c.next_gap_s()) differs = true;
    ASSERT_GT(g, 0);
    sum += g;
  }
  EXPECT_TRUE(differs);
  EXPECT_NEAR(sum / n, 0.25, 0.25 * 0.03);  // sd of the mean: 0.25/sqrt(n) = 0.7%
}

TEST(ServeBenchUnit, random_prompts_depend_only_on_seed_and_index) {
  auto p = random_token_prompt(5, 3, 64, 1000);
  EXPECT_EQ(p.size(), 64u);
  EXPECT_EQ(p, random_token_prompt(5, 3, 64, 1000));
  EXPECT_NE(p, random_token_prompt(5, 4, 64, 1000));
  EXPECT_NE(p, random_token_prompt(6, 3, 64, 1000));
  for (int32_t id : p) {
    EXPECT_GE(id, 0);
    EXPECT_LT(id, 1000);
  }
}

}  // namespace
}  // namespace mpserve::bench
