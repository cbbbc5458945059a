// Seeded fuzzing of the request parser: in process (many bodies, fast) and against the real
// server (fewer bodies, every answer must be well-formed and the server must stay up).
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "server/openai_protocol.h"
#include "server/server_test_util.h"

namespace mpserve::testing {
namespace {

using json = nlohmann::json;
using server::ApiError;
using server::Endpoint;
using server::ParsedRequest;

const std::vector<std::string>& seeds() {
  static const std::vector<std::string> s = {
      R"({"prompt":"hello","max_tokens":2})",
      R"({"prompt":[1,2,3],"max_tokens":2,"temperature":0.5,"top_p":0.9,"top_k":5,"seed":3})",
      R"({"prompt":["a","b"],"max_tokens":1,"stop":["x","y"],"n":1})",
      R"({"prompt":"s","max_tokens":2,"stream":true,"stream_options":{"include_usage":true}})",
      R"({"messages":[{"role":"user","content":"hi"}],"max_tokens":2})",
      R"({"messages":[{"role":"system","content":"s"},{"role":"user","content":[{"type":"text","text":"t"}]}],"max_completion_tokens":2,"stream":true})",
  };
  return s;
}

// Values of every JSON type, including edge cases, to splice into fields.
json random_value(std::mt19937_64& rng, int depth = 0) {
  static const std::vector<json> atoms = {
      nullptr, true, false, 0, -1, 1, 2, 16, 255, 256, 100000, -2147483648LL, 9223372036854775807LL,
      18446744073709551615ULL, 0.5, -0.0, 1e308, -1e308, 2.5, "", "x", "\xe4\xbd\xa0", "user", "assistant",
      "text", "[DONE]", std::string(300, 'a'), json::array(), json::object()};
  std::uniform_int_distribution<int> pick(0, depth > 2 ? 0 : 2);
  switch (pick(rng)) {
    case 1: {
      json a = json::array();
      for (int i = 0, n = static_cast<int>(rng() % 4); i < n; ++i) a.push_back(random_value(rng, depth + 1));
      return a;
    }
    case 2: {
      static const char* keys[] = {"role", "content", "type", "text", "include_usage", "prompt", "x"};
      json o = json::object();
      for (int i = 0, n = static_cast<int>(rng() % 3); i < n; ++i) o[keys[rng() % 7]] = random_value(rng, depth + 1);
      return o;
    }
    default:
      return atoms[rng() % atoms.size()];
  }
}

// A structural mutation (a field set to a random value, or removed) or a byte-level one.
std::string mutate(const std::string& seed, std::mt19937_64& rng) {
  static const char* fields[] = {"prompt", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p",
                                 "top_k", "seed", "stop", "stream", "stream_options", "n", "model", "ignore_eos",
                                 "logprobs", "echo", "stop_token_ids", "min_tokens", "skip_special_tokens"};
  if (rng() % 2 == 0) {
    json j = json::parse(seed);
    for (int k = 0, n = 1 + static_cast<int>(rng() % 3); k < n; ++k) {
      const char* f = fields[rng() % (sizeof(fields) / sizeof(fields[0]))];
      if (rng() % 5 == 0) {
        j.erase(f);
      } else {
        j[f] = random_value(rng);
      }
    }
    // Keep generation short when the mutation happens to be valid.
    if (rng() % 4 != 0) j["max_tokens"] = 1 + static_cast<int>(rng() % 3);
    return j.dump(-1, ' ', false, json::error_handler_t::replace);
  }
  std::string s = seed;
  static const std::vector<std::string> tokens = {"{", "}", "[", "]", ",", ":", "\"", "\\", "null", "1e999", "-",
                                                  "\\ud800", "\xff", "\xc3", std::string(1, '\0'), "true", "0x10"};
  for (int k = 0, n = 1 + static_cast<int>(rng() % 4); k < n && !s.empty(); ++k) {
    size_t pos = rng() % s.size();
    switch (rng() % 4) {
      case 0:
        s[pos] = static_cast<char>(rng() % 256);
        break;
      case 1:
        s.insert(pos, tokens[rng() % tokens.size()]);
        break;
      case 2:
        s.erase(pos, 1 + rng() % 8);
        break;
      default:
        s = s.substr(0, pos);
        break;
    }
  }
  return s;
}

TEST(ParserFuzz, mutated_bodies_parse_or_fail_with_a_4xx_never_throw) {
  std::mt19937_64 rng(12345);
  server::ProtocolLimits lim;
  lim.vocab_size = 1000;
  lim.max_model_len = 256;
  int ok = 0, errors = 0;
  for (int i = 0; i < 20000; ++i) {
    const std::string& seed = seeds()[rng() % seeds().size()];
    Endpoint ep = seed.find("messages") != std::string::npos ? Endpoint::kChat : Endpoint::kCompletions;
    std::string body = mutate(seed, rng);
    auto r = server::parse_request(ep, body, lim);
    if (auto* e = std::get_if<ApiError>(&r)) {
      ++errors;
      ASSERT_GE(e->status, 400) << body;
      ASSERT_LT(e->status, 500) << body;
      ASSERT_FALSE(e->message.empty()) << body;
      json eb = json::parse(server::error_body(*e), nullptr, false);
      ASSERT_FALSE(eb.is_discarded()) << body;
    } else {
      ++ok;
      const ParsedRequest& p = std::get<ParsedRequest>(r);
      ASSERT_GE(p.n, 1) << body;
      if (p.max_tokens) {
        ASSERT_GE(*p.max_tokens, 1);
        ASSERT_LE(*p.max_tokens, lim.max_model_len);
      }
    }
  }
  // Both outcomes are exercised.
  EXPECT_GT(ok, 1000);
  EXPECT_GT(errors, 1000);
}

TEST(ServerFuzz, mutated_bodies_always_get_a_well_formed_answer) {
  // note: a short context bounds the work of mutated requests that lost their max_tokens
  // (chat then defaults to the rest of the context); the tiny model is slow on 2 busy cores.
  ServerProcess srv({}, 48);
  ASSERT_TRUE(srv.ready());
  std::mt19937_64 rng(777);
  net::io_context ioc;
  beast::tcp_stream stream(ioc);
  stream.connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), srv.port()));
  beast::flat_buffer buffer;
  int counts[6] = {0};
  for (int i = 0; i < 600; ++i) {
    const std::string& seed = seeds()[rng() % seeds().size()];
    bool chat = seed.find("messages") != std::string::npos;
    std::string body = mutate(seed, rng);
    http::request<http::string_body> req(http::verb::post, chat ? "/v1/chat/completions" : "/v1/completions", 11);
    req.set(http::field::host, "x");
    req.set(http::field::content_type, "application/json");
    req.body() = body;
    req.prepare_payload();
    http::write(stream, req);
    http::response<http::string_body> res;
    http::read(stream, buffer, res);
    int status = static_cast<int>(res.result_int());
    ++counts[status / 100];
    ASSERT_TRUE(status == 200 || (status >= 400 && status < 500)) << status << " for " << body << ": " << res.body();
    if (std::string(res[http::field::content_type]) == "text/event-stream") {
      auto events = sse_events(res.body());
      ASSERT_FALSE(events.empty()) << body;
      ASSERT_EQ(events.back(), "[DONE]") << body;
      for (size_t k = 0; k + 1 < events.size(); ++k) {
        ASSERT_FALSE(json::parse(events[k], nullptr, false).is_discarded()) << events[k];
      }
    } else {
      json j = json::parse(res.body(), nullptr, false);
      ASSERT_FALSE(j.is_discarded()) << body << " -> " << res.body();
      if (status >= 400) {
        ASSERT_TRUE(j["error"]["message"].is_string()) << res.body();
      }
    }
    if (!res.keep_alive()) {
      stream.close();
      stream.connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), srv.port()));
    }
  }
  EXPECT_GT(counts[2], 50);
  EXPECT_GT(counts[4], 50);
  EXPECT_EQ(get(srv.port(), "/health").status, 200);
}

}  // namespace
}  // namespace mpserve::testing
