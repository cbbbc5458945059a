// Policies and request parsing: which engine a request goes to, as distributions over many picks.
#include <map>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "router/engine_pool.h"
#include "router/policy.h"
#include "router/request_info.h"

namespace mpserve::router {
namespace {

std::vector<EngineLoad> loads(int n) {
  std::vector<EngineLoad> v(n);
  for (int i = 0; i < n; ++i) {
    v[i].id = "http://127.0.0.1:" + std::to_string(9000 + i);
    v[i].available = true;
  }
  return v;
}

TEST(Policy, round_robin_spreads_requests_evenly) {
  Policy p(PolicyKind::kRoundRobin);
  auto l = loads(3);
  std::map<size_t, int> count;
  for (int i = 0; i < 300; ++i) count[*p.choose(l, "", {})]++;
  EXPECT_EQ(count[0], 100);
  EXPECT_EQ(count[1], 100);
  EXPECT_EQ(count[2], 100);
}

TEST(Policy, every_policy_skips_unavailable_and_excluded_engines) {
  for (auto kind : {PolicyKind::kRoundRobin, PolicyKind::kLeastRequests, PolicyKind::kLeastTokens,
                    PolicyKind::kPrefixAffinity}) {
    Policy p(kind);
    auto l = loads(3);
    l[1].available = false;
    for (int i = 0; i < 50; ++i) {
      auto c = p.choose(l, "prompt " + std::to_string(i), {0});
      ASSERT_TRUE(c.has_value()) << policy_name(kind);
      EXPECT_EQ(*c, 2u) << policy_name(kind);
    }
    EXPECT_FALSE(p.choose(l, "x", {0, 2}).has_value()) << policy_name(kind);
  }
}

TEST(Policy, least_requests_balances_outstanding_requests) {
  EnginePool pool;
  for (int i = 0; i < 3; ++i) pool.add({"127.0.0.1", 9000 + i});
  for (size_t i = 0; i < 3; ++i) pool.set_managed(i, "running", 1);
  Policy p(PolicyKind::kLeastRequests);
  std::vector<Lease> held;
  for (int i = 0; i < 30; ++i) held.push_back(*pool.acquire(p, "", 10, {}));
  auto admin = pool.admin_json();
  for (const auto& e : admin["engines"]) EXPECT_EQ(e["outstanding_requests"], 10);
  // Engine 0 finishes its work: the next ten requests all go there.
  for (const Lease& l : held) {
    if (l.engine == 0) pool.release(l, Outcome::kOk);
  }
  for (int i = 0; i < 10; ++i) EXPECT_EQ(pool.acquire(p, "", 10, {})->engine, 0u);
}

TEST(Policy, least_tokens_counts_prompt_estimate_plus_max_tokens) {
  EnginePool pool;
  for (int i = 0; i < 2; ++i) pool.add({"127.0.0.1", 9000 + i});
  for (size_t i = 0; i < 2; ++i) pool.set_managed(i, "running", 1);
  Policy p(PolicyKind::kLeastTokens);
  // One long request (400-byte prompt = 100 tokens, max_tokens 1000) against many short ones.
  auto big = *parse_request_info(R"({"prompt":")" + std::string(400, 'a') + R"(","max_tokens":1000})", false);
  EXPECT_EQ(big.work_tokens(), 1100);
  auto small = *parse_request_info(R"({"prompt":"abcdefgh","max_tokens":8})", false);
  EXPECT_EQ(small.work_tokens(), 10);
  Lease b = *pool.acquire(p, "", big.work_tokens(), {});
  std::map<size_t, int> count;
  for (int i = 0; i < 100; ++i) count[pool.acquire(p, "", small.work_tokens(), {})->engine]++;
  // 100 small requests (1000 tokens) still weigh less than the one big request.
  EXPECT_EQ(count[b.engine], 0);
  EXPECT_EQ(count[1 - b.engine], 100);
  auto admin = pool.admin_json();
  EXPECT_EQ(admin["engines"][b.engine]["outstanding_tokens"], 1100);
  EXPECT_EQ(admin["engines"][1 - b.engine]["outstanding_tokens"], 1000);
}

TEST(Policy, least_requests_does_not_pile_onto_one_engine_when_idle) {
  Policy p(PolicyKind::kLeastRequests);
  auto l = loads(4);
  std::map<size_t, int> count;
  for (int i = 0; i < 400; ++i) count[*p.choose(l, "", {})]++;
  for (size_t i = 0; i < 4; ++i) EXPECT_EQ(count[i], 100);
}

TEST(Policy, prefix_affinity_is_consistent_balanced_and_moves_only_a_removed_engines_keys) {
  Policy p(PolicyKind::kPrefixAffinity);
  auto l = loads(3);
  const int kKeys = 3000;
  std::vector<size_t> first(kKeys);
  std::map<size_t, int> count;
  for (int k = 0; k < kKeys; ++k) {
    std::string prompt = "system prompt #" + std::to_string(k) + " ... then the user's question";
    first[k] = *p.choose(l, prompt, {});
    count[first[k]]++;
    // Same prefix, different tail beyond the hashed bytes: same engine.
    EXPECT_EQ(*p.choose(l, prompt + std::string(300, 'z') + "A", {}), *p.choose(l, prompt + std::string(300, 'z') + "B", {}));
  }
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_GT(count[i], kKeys / 3 * 0.85) << "engine " << i;
    EXPECT_LT(count[i], kKeys / 3 * 1.15) << "engine " << i;
  }
  l[1].available = false;
  int moved_from_others = 0;
  for (int k = 0; k < kKeys; ++k) {
    std::string prompt = "system prompt #" + std::to_string(k) + " ... then the user's question";
    size_t now = *p.choose(l, prompt, {});
    if (first[k] != 1 && now != first[k]) moved_from_others++;
    EXPECT_NE(now, 1u);
  }
  EXPECT_EQ(moved_from_others, 0);
}

TEST(RequestInfo, reads_chat_messages_stream_flag_and_defaults) {
  auto chat = *parse_request_info(
      R"({"messages":[{"role":"system","content":"be brief"},{"role":"user","content":[{"type":"text","text":"hi there"}]}],
          "stream":true,"max_completion_tokens":32})",
      true);
  EXPECT_TRUE(chat.stream);
  EXPECT_EQ(chat.max_tokens, 32);
  EXPECT_EQ(chat.prompt_prefix, "system:be brief\nuser:hi there\n");
  auto plain = *parse_request_info(R"({"prompt":"hello"})", false);
  EXPECT_FALSE(plain.stream);
  EXPECT_EQ(plain.max_tokens, kDefaultMaxTokens);
  EXPECT_EQ(plain.prompt_tokens_estimate, 2);
  EXPECT_FALSE(parse_request_info("[1,2]", false).is_ok());
  EXPECT_FALSE(parse_request_info("not json", false).is_ok());
}

TEST(EngineUrl, parses_host_port_and_rejects_garbage) {
  auto a = *parse_engine_url("http://127.0.0.1:8001/v1");
  EXPECT_EQ(a.host, "127.0.0.1");
  EXPECT_EQ(a.port, 8001);
  EXPECT_EQ(parse_engine_url("localhost:9")->port, 9);
  EXPECT_FALSE(parse_engine_url("https://x:1").is_ok());
  EXPECT_FALSE(parse_engine_url("http://x").is_ok());
  EXPECT_FALSE(parse_engine_url("http://x:99999").is_ok());
}

}  // namespace
}  // namespace mpserve::router
