// Many requests of random lengths, random aborts and a tiny KV cache that forces preemption:
// after every step the invariants hold, and in the end every request produced exactly what it
// produces alone, with synchronous and with async scheduling (which therefore agree).
#include <gtest/gtest.h>

#include <random>

#include "engine_fakes.h"

namespace mpserve::engine {
namespace {

using testing::Collected;
using testing::FakeBackendOptions;
using testing::FakeEngine;
using testing::run_alone;

struct RandomCase {
  uint32_t seed;
  bool chunked;
  bool prefix_caching;
  bool async = false;
};

class EngineRandom : public ::testing::TestWithParam<RandomCase> {};

TEST_P(EngineRandom, engine_random_load_keeps_invariants_and_matches_solo_runs) {
  const RandomCase pc = GetParam();
  std::mt19937 rng(pc.seed);
  EngineOptions opts;
  opts.enable_chunked_prefill = pc.chunked;
  opts.enable_prefix_caching = pc.prefix_caching;
  opts.async_scheduling = pc.async;
  opts.backend.max_num_seqs = 6;
  opts.backend.max_num_batched_tokens = pc.chunked ? 12 : 80;
  opts.backend.max_model_len = 128;
  FakeBackendOptions bo;
  bo.block_size = 4;
  bo.num_blocks = 20;  // 80 token slots: a few sequences at a time
  FakeEngine fe(opts, bo);

  // Shared prefixes so the prefix cache gets hits; some requests stop early on eos (id 0).
  const std::vector<GenerationRequest> reqs = testing::random_requests(rng, 60, /*stop_ids_and_logits=*/false);

  std::map<uint64_t, size_t> index;
  std::map<uint64_t, Collected> got;
  std::set<uint64_t> aborted;
  size_t next = 0;
  int steps = 0;
  while ((next < reqs.size() || fe.engine->has_unfinished()) && steps < 20000) {
    // Requests arrive a few at a time.
    for (int k = rng() % 4; k > 0 && next < reqs.size(); --k, ++next) {
      auto id = fe.engine->add_request(reqs[next]);
      ASSERT_TRUE(id.is_ok()) << id.error();
      index[*id] = next;
    }
    if (!index.empty() && rng() % 10 == 0) {
      auto it = index.begin();
      std::advance(it, rng() % index.size());
      if (!got[it->first].finished && !aborted.count(it->first)) {
        fe.engine->abort_request(it->first);
        aborted.insert(it->first);
        fe.engine->check_invariants();
      }
    }
    for (const RequestOutput& o : fe.engine->step()) {
      Collected& c = got[o.request_id];
      ASSERT_FALSE(c.finished) << "output after finish";
      c.tokens.insert(c.tokens.end(), o.new_tokens.begin(), o.new_tokens.end());
      c.text += o.new_text;
      c.finished = o.finished;
      c.reason = o.finish_reason;
    }
    fe.engine->check_invariants();
    ++steps;
  }
  ASSERT_FALSE(fe.engine->has_unfinished());
  EXPECT_EQ(fe.fake->errors, 0);
  const EngineStats s = fe.engine->stats();
  EXPECT_EQ(s.kv_blocks_used, 0);
  EXPECT_EQ(s.num_running + s.num_waiting, 0);
  EXPECT_GT(s.num_preemptions, 0) << "the KV cache was meant to be too small";
  if (pc.prefix_caching) {
    EXPECT_GT(s.prefix_cache_hit_tokens, 0);
  }

  for (const auto& [id, i] : index) {
    const Collected& c = got[id];
    ASSERT_TRUE(c.finished) << "request " << i << " never finished";
    Collected alone = run_alone(reqs[i], bo.block_size);
    if (aborted.count(id)) {
      EXPECT_EQ(c.reason, FinishReason::kAborted);
      ASSERT_LE(c.tokens.size(), alone.tokens.size());
      EXPECT_TRUE(std::equal(c.tokens.begin(), c.tokens.end(), alone.tokens.begin())) << "request " << i;
    } else {
      EXPECT_EQ(c.tokens, alone.tokens) << "request " << i;
      EXPECT_EQ(c.text, alone.text) << "request " << i;
      EXPECT_EQ(c.reason, alone.reason) << "request " << i;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Seeds, EngineRandom,
                         ::testing::Values(RandomCase{1, true, true}, RandomCase{2, true, false},
                                           RandomCase{3, false, true}, RandomCase{4, false, false},
                                           RandomCase{5, true, true}, RandomCase{6, true, true},
                                           RandomCase{1, true, true, true}, RandomCase{2, true, false, true},
                                           RandomCase{3, false, true, true}, RandomCase{4, false, false, true},
                                           RandomCase{5, true, true, true}, RandomCase{6, true, true, true},
                                           RandomCase{7, true, true, true}, RandomCase{8, false, true, true}),
                         [](const ::testing::TestParamInfo<RandomCase>& info) {
                           return "seed" + std::to_string(info.param.seed) + (info.param.chunked ? "_chunked" : "") +
                                  (info.param.prefix_caching ? "_prefix_cache" : "") + (info.param.async ? "_async" : "");
                         });

}  // namespace
}  // namespace mpserve::engine
