#include "engine/engine.h"

#include <gtest/gtest.h>

#include <chrono>
#include <random>

#include "engine/sequence.h"
#include "engine_fakes.h"

namespace mpserve::engine {
namespace {

using testing::Collected;
using testing::FakeBackendOptions;
using testing::FakeEngine;
using testing::FakeTokenizer;
using testing::letters;
using testing::run_all;
using testing::run_alone;

GenerationRequest request(std::vector<int32_t> prompt, int32_t max_tokens, float temperature = 0.0f,
                          uint64_t seed = 0) {
  GenerationRequest r;
  r.prompt = std::move(prompt);
  r.max_tokens = max_tokens;
  r.sampling.temperature = temperature;
  r.sampling.seed = seed;
  r.ignore_eos = true;
  return r;
}

std::vector<int32_t> random_prompt(std::mt19937& rng, int len) {
  std::uniform_int_distribution<int> tok(2, 37);
  std::vector<int32_t> p(len);
  for (auto& t : p) t = tok(rng);
  return p;
}

TEST(Engine, batched_output_equals_one_at_a_time) {
  std::mt19937 rng(7);
  std::vector<GenerationRequest> reqs;
  for (int i = 0; i < 12; ++i) {
    reqs.push_back(request(random_prompt(rng, 3 + i * 2), 5 + i % 7, i % 3 == 0 ? 0.0f : 0.8f, 100 + i));
  }
  EngineOptions opts;
  opts.backend.max_num_batched_tokens = 32;
  opts.backend.max_num_seqs = 6;
  FakeEngine fe(opts, FakeBackendOptions{});
  std::vector<uint64_t> ids;
  for (const auto& r : reqs) ids.push_back(*fe.engine->add_request(r));
  auto got = run_all(*fe.engine);
  EXPECT_EQ(fe.fake->errors, 0);
  for (size_t i = 0; i < reqs.size(); ++i) {
    Collected alone = run_alone(reqs[i]);
    EXPECT_EQ(got[ids[i]].tokens, alone.tokens) << "request " << i;
    EXPECT_EQ(got[ids[i]].text, alone.text) << "request " << i;
    EXPECT_EQ(got[ids[i]].reason, FinishReason::kLength);
    EXPECT_EQ(got[ids[i]].tokens.size(), static_cast<size_t>(reqs[i].max_tokens));
  }
  // They really were batched.
  int32_t max_entries = 0;
  for (const auto& s : fe.fake->steps) max_entries = std::max(max_entries, s.num_entries);
  EXPECT_EQ(max_entries, 6);
  EXPECT_EQ(fe.engine->stats().kv_blocks_used, 0);
}

TEST(Engine, chunked_prefill_matches_unchunked_output) {
  std::mt19937 rng(11);
  std::vector<GenerationRequest> reqs;
  for (int i = 0; i < 6; ++i) reqs.push_back(request(random_prompt(rng, 20 + 7 * i), 6, 0.7f, i));
  auto run = [&](bool chunked, int budget) {
    EngineOptions opts;
    opts.enable_chunked_prefill = chunked;
    opts.enable_prefix_caching = false;
    opts.backend.max_num_batched_tokens = budget;
    FakeEngine fe(opts, FakeBackendOptions{});
    std::vector<uint64_t> ids;
    for (const auto& r : reqs) ids.push_back(*fe.engine->add_request(r));
    auto got = run_all(*fe.engine);
    EXPECT_EQ(fe.fake->errors, 0);
    int64_t max_tokens = 0;
    for (const auto& s : fe.fake->steps) max_tokens = std::max(max_tokens, s.num_tokens);
    EXPECT_LE(max_tokens, budget);
    std::vector<std::vector<int32_t>> out;
    for (uint64_t id : ids) out.push_back(got[id].tokens);
    return out;
  };
  auto whole = run(false, 1024);
  auto chunked = run(true, 7);  // every prompt is split over several steps
  EXPECT_EQ(whole, chunked);
}

TEST(Engine, prefix_cache_hit_skips_prefill_tokens) {
  std::mt19937 rng(3);
  std::vector<int32_t> shared = random_prompt(rng, 16);
  GenerationRequest a = request(shared, 4);
  a.prompt.push_back(30);
  GenerationRequest b = request(shared, 4);
  b.prompt.insert(b.prompt.end(), {31, 32, 33});

  EngineOptions opts;
  FakeEngine fe(opts, FakeBackendOptions{});  // block size 4: 4 full shared blocks
  uint64_t ia = *fe.engine->add_request(a);
  auto ga = run_all(*fe.engine);
  const int64_t tokens_after_a = fe.fake->tokens_run;
  uint64_t ib = *fe.engine->add_request(b);
  auto gb = run_all(*fe.engine);
  EXPECT_EQ(fe.fake->errors, 0);
  // B's first step starts at position 16: only its 3 own prompt tokens are prefilled.
  const auto& first_b = fe.fake->steps[fe.fake->steps.size() - 4].entries.at(0);
  EXPECT_EQ(first_b.seq_id, static_cast<int64_t>(ib));
  EXPECT_EQ(first_b.context_len, 16);
  EXPECT_EQ(fe.fake->tokens_run - tokens_after_a, 3 + 3);  // prefill 3, then 3 decodes
  EXPECT_EQ(fe.engine->stats().prefix_cache_hit_tokens, 16);
  // Same output as without any cache.
  EXPECT_EQ(gb[ib].tokens, run_alone(b).tokens);
  EXPECT_EQ(ga[ia].tokens, run_alone(a).tokens);
}

TEST(Engine, abort_frees_blocks_immediately) {
  EngineOptions opts;
  FakeEngine fe(opts, FakeBackendOptions{});
  uint64_t id = *fe.engine->add_request(request(letters("helloworld"), 50));
  uint64_t other = *fe.engine->add_request(request(letters("second"), 5));
  fe.engine->step();
  fe.engine->step();
  EXPECT_GT(fe.engine->stats().kv_blocks_used, 0);
  const int32_t used_by_other = 2;  // "second" + 2 generated, 7 in the KV cache: 2 blocks of 4
  fe.engine->abort_request(id);
  EXPECT_EQ(fe.engine->stats().kv_blocks_used, used_by_other);
  EXPECT_EQ(fe.engine->stats().num_running, 1);
  fe.engine->check_invariants();
  fe.engine->abort_request(12345);  // unknown: ignored
  auto outs = fe.engine->step();
  ASSERT_FALSE(outs.empty());
  EXPECT_EQ(outs[0].request_id, id);
  EXPECT_TRUE(outs[0].finished);
  EXPECT_EQ(outs[0].finish_reason, FinishReason::kAborted);
  EXPECT_STREQ(finish_reason_name(outs[0].finish_reason), "abort");
  auto rest = run_all(*fe.engine);
  EXPECT_TRUE(rest[other].finished);
  EXPECT_FALSE(rest.count(id));
  EXPECT_EQ(fe.engine->stats().kv_blocks_used, 0);
}

TEST(Engine, stop_string_is_not_returned_and_held_back_text_released) {
  EngineOptions opts;
  FakeEngine fe(opts, FakeBackendOptions{});
  // Generates "the cat sat." one id per piece: the, ' ', c, a, t, ' ', s, a, t, '.'
  auto sentence = std::vector<int32_t>{31, 28, 4, 2, 21, 28, 20, 2, 21, 29};
  GenerationRequest r = request(letters("go"), 10);
  r.stop = {"at.", "cat!"};  // "cat" is held back until ' ' shows it is not "cat!"
  uint64_t id = *fe.engine->add_request(r);
  fe.fake->forced[static_cast<int64_t>(id)] = sentence;
  std::vector<std::string> pieces;
  Collected c;
  while (fe.engine->has_unfinished()) {
    for (const auto& o : fe.engine->step()) {
      pieces.push_back(o.new_text);
      c.text += o.new_text;
      c.tokens.insert(c.tokens.end(), o.new_tokens.begin(), o.new_tokens.end());
      c.reason = o.finish_reason;
    }
  }
  EXPECT_EQ(c.text, "the cat s");
  EXPECT_EQ(c.reason, FinishReason::kStop);
  EXPECT_EQ(c.tokens, sentence);  // ids are all returned; only the text is cut
  // After "c" and "a" and "t" nothing new is released; the space releases "cat ".
  ASSERT_EQ(pieces.size(), 10u);
  EXPECT_EQ(pieces[0], "the");
  EXPECT_EQ(pieces[2], "");
  EXPECT_EQ(pieces[3], "");
  EXPECT_EQ(pieces[4], "");
  EXPECT_EQ(pieces[5], "cat ");

  // A stop string that never completes: held-back text comes out at the end.
  GenerationRequest r2 = request(letters("go"), 4);
  r2.stop = {"hex"};
  uint64_t id2 = *fe.engine->add_request(r2);
  fe.fake->forced[static_cast<int64_t>(id2)] = {2, 3, 21, 9};  // a b t h
  auto got = run_all(*fe.engine);
  EXPECT_EQ(got[id2].text, "abth");
  EXPECT_EQ(got[id2].reason, FinishReason::kLength);
}

TEST(Engine, stop_string_matcher_finds_earliest_match_across_pieces) {
  StopStringMatcher m({"rld", "world"});
  bool stopped = false;
  EXPECT_EQ(m.feed("Hello w", &stopped), "Hello ");
  EXPECT_FALSE(stopped);
  EXPECT_EQ(m.feed("o", &stopped), "");
  EXPECT_EQ(m.feed("rld!", &stopped), "");  // "world" starts first, though "rld" is listed first
  EXPECT_TRUE(stopped);
  EXPECT_EQ(m.feed("more", &stopped), "");
  EXPECT_EQ(m.finish(), "");

  StopStringMatcher n({"\n\n"});
  EXPECT_EQ(n.feed("a\n", &stopped), "a");
  EXPECT_EQ(n.feed("b\n", &stopped), "\nb");
  EXPECT_EQ(n.finish(), "\n");
}

TEST(Engine, utf8_split_across_tokens_is_released_whole) {
  EngineOptions opts;
  FakeEngine fe(opts, FakeBackendOptions{});
  uint64_t id = *fe.engine->add_request(request(letters("x"), 5));
  fe.fake->forced[static_cast<int64_t>(id)] = {38, 39, 40, 41, 2};  // é (2 ids), € (2 ids), a
  std::vector<std::string> pieces;
  while (fe.engine->has_unfinished()) {
    for (const auto& o : fe.engine->step()) pieces.push_back(o.new_text);
  }
  EXPECT_EQ(pieces, (std::vector<std::string>{"", "\xC3\xA9", "", "\xE2\x82\xAC", "a"}));
}

TEST(Engine, eos_and_stop_token_ids_finish_with_stop) {
  FakeBackendOptions bo;
  bo.eos_token_ids = {45};  // the model config's eos, besides the tokenizer's id 0
  EngineOptions opts;
  FakeEngine fe(opts, bo);
  GenerationRequest r = request(letters("ab"), 10);
  r.ignore_eos = false;
  uint64_t a = *fe.engine->add_request(r);
  uint64_t b = *fe.engine->add_request(r);
  GenerationRequest r_stop = request(letters("ab"), 10);
  r_stop.stop_token_ids = {7};
  uint64_t c = *fe.engine->add_request(r_stop);
  uint64_t d = *fe.engine->add_request(request(letters("ab"), 3));  // ignore_eos
  fe.fake->forced[static_cast<int64_t>(a)] = {2, 3, 0, 4};
  fe.fake->forced[static_cast<int64_t>(b)] = {2, 45, 4};
  fe.fake->forced[static_cast<int64_t>(c)] = {2, 7, 4};
  fe.fake->forced[static_cast<int64_t>(d)] = {0, 0, 0};
  auto got = run_all(*fe.engine);
  EXPECT_EQ(got[a].tokens, (std::vector<int32_t>{2, 3, 0}));
  EXPECT_EQ(got[a].text, "ab");  // the eos id is returned, its text is not
  EXPECT_EQ(got[a].reason, FinishReason::kStop);
  EXPECT_EQ(got[b].tokens, (std::vector<int32_t>{2, 45}));
  EXPECT_EQ(got[b].reason, FinishReason::kStop);
  EXPECT_EQ(got[c].tokens, (std::vector<int32_t>{2, 7}));
  EXPECT_EQ(got[c].text, "a");
  EXPECT_EQ(got[c].reason, FinishReason::kStop);
  EXPECT_EQ(got[d].tokens.size(), 3u);
  EXPECT_EQ(got[d].reason, FinishReason::kLength);
  EXPECT_STREQ(finish_reason_name(FinishReason::kLength), "length");
  EXPECT_STREQ(finish_reason_name(FinishReason::kStop), "stop");
}

TEST(Engine, add_request_rejects_bad_input_with_clear_messages) {
  EngineOptions opts;
  opts.backend.max_model_len = 64;
  opts.max_waiting = 2;
  FakeBackendOptions bo;
  bo.num_blocks = 8;  // 32 token slots
  FakeEngine fe(opts, bo);
  auto expect_error = [&](GenerationRequest r, const std::string& needle) {
    auto res = fe.engine->add_request(std::move(r));
    ASSERT_FALSE(res.is_ok()) << needle;
    EXPECT_NE(res.error().find(needle), std::string::npos) << res.error();
  };
  expect_error(request({}, 4), "prompt is empty");
  expect_error(request({2, 64}, 4), "outside the vocabulary");
  expect_error(request({2, -1}, 4), "outside the vocabulary");
  expect_error(request({2}, 0), "max_tokens must be >= 1");
  expect_error(request(std::vector<int32_t>(60, 2), 5), "exceeds max_model_len 64");
  expect_error(request(std::vector<int32_t>(30, 2), 5), "can never fit the KV cache");
  expect_error(request({2}, 4, -0.5f), "temperature");
  GenerationRequest bad_p = request({2}, 4);
  bad_p.sampling.top_p = 0.0f;
  expect_error(bad_p, "top_p must be in (0, 1]");
  bad_p.sampling.top_p = 1.5f;
  expect_error(bad_p, "top_p");
  GenerationRequest bad_k = request({2}, 4);
  bad_k.sampling.top_k = -1;
  expect_error(bad_k, "top_k must be >= 0");
  GenerationRequest bad_stop = request({2}, 4);
  bad_stop.stop = {""};
  expect_error(bad_stop, "stop string 0 is empty");
  EXPECT_TRUE(fe.engine->add_request(request({2}, 4)).is_ok());
  EXPECT_TRUE(fe.engine->add_request(request({2}, 4)).is_ok());
  expect_error(request({2}, 4), "overloaded");
  EXPECT_EQ(fe.engine->stats().num_waiting, 2);
}

TEST(Engine, want_logits_returns_one_row_per_sampled_token) {
  EngineOptions opts;
  FakeEngine fe(opts, FakeBackendOptions{});
  GenerationRequest r = request(letters("abc"), 3);
  r.want_logits = true;
  uint64_t with = *fe.engine->add_request(r);
  uint64_t without = *fe.engine->add_request(request(letters("abd"), 3));
  while (fe.engine->has_unfinished()) {
    for (const auto& o : fe.engine->step()) {
      if (o.request_id == with) {
        ASSERT_EQ(o.logits.size(), o.new_tokens.size() * FakeTokenizer::kVocab);
        EXPECT_EQ(o.logits[o.new_tokens[0]], 1.0f);
      } else {
        EXPECT_EQ(o.request_id, without);
        EXPECT_TRUE(o.logits.empty());
      }
    }
  }
}

TEST(Engine, step_cpu_us_busy_waits_each_step_and_stats_count) {
  EngineOptions opts;
  opts.step_cpu_us = 20000;
  FakeEngine fe(opts, FakeBackendOptions{});
  uint64_t id = *fe.engine->add_request(request(letters("abc"), 2));
  const auto t0 = std::chrono::steady_clock::now();
  auto got = run_all(*fe.engine);
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_TRUE(got[id].finished);
  const EngineStats s = fe.engine->stats();
  EXPECT_EQ(s.steps, 2);
  EXPECT_GE(ms, 40.0);
  EXPECT_GE(s.last_step_ms, 20.0);
  EXPECT_EQ(s.prompt_tokens_total, 3);
  EXPECT_EQ(s.generation_tokens_total, 2);
  EXPECT_EQ(s.kv_blocks_total, 64);
  EXPECT_EQ(s.num_running + s.num_waiting, 0);
}

}  // namespace
}  // namespace mpserve::engine
