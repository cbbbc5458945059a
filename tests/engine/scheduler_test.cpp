#include "engine/scheduler.h"

#include <gtest/gtest.h>

#include <memory>

#include "engine_fakes.h"

namespace mpserve::engine {
namespace {

using testing::FakeTokenizer;

struct World {
  World(int32_t num_blocks, int32_t block_size, SchedulerConfig cfg, bool prefix_caching = false)
      : bm(num_blocks, block_size, prefix_caching), sched(cfg, &bm) {}
  Sequence* add(int prompt_len, int first_token = 2) {
    GenerationRequest r;
    for (int i = 0; i < prompt_len; ++i) r.prompt.push_back(first_token + i % 40);
    const uint64_t id = seqs.size() + 1;
    seqs.push_back(std::make_unique<Sequence>(id, id, std::move(r), tok));
    sched.add(seqs.back().get());
    return seqs.back().get();
  }
  // Plays the engine's post-processing: KV written, one token appended per sampled entry.
  void finish_step(const SchedulerOutput& out) {
    for (const auto& s : out.scheduled) {
      s.seq->num_computed += s.num_tokens;
      bm.on_computed(*s.seq);
      if (s.sample) s.seq->tokens.push_back(5);
    }
    check();
  }
  void check() {
    std::vector<const Sequence*> live;
    for (auto& s : seqs) {
      if (s->status != SeqStatus::kFinished) live.push_back(s.get());
    }
    bm.check_invariants(live);
  }
  FakeTokenizer tok;
  BlockManager bm;
  Scheduler sched;
  std::vector<std::unique_ptr<Sequence>> seqs;
};

TEST(Scheduler, scheduler_respects_token_budget_and_seq_cap) {
  World w(64, 4, SchedulerConfig{/*max_num_seqs=*/2, /*max_num_batched_tokens=*/8, /*chunked=*/true});
  Sequence* a = w.add(5);
  Sequence* b = w.add(5);
  Sequence* c = w.add(5);
  SchedulerOutput o1 = w.sched.schedule();
  ASSERT_EQ(o1.scheduled.size(), 2u);
  EXPECT_EQ(o1.num_batched_tokens, 8);
  EXPECT_EQ(o1.scheduled[0].seq, a);
  EXPECT_EQ(o1.scheduled[0].num_tokens, 5);
  EXPECT_TRUE(o1.scheduled[0].sample);
  EXPECT_EQ(o1.scheduled[1].seq, b);
  EXPECT_EQ(o1.scheduled[1].num_tokens, 3);  // chunk: the budget is spent
  EXPECT_FALSE(o1.scheduled[1].sample);
  EXPECT_EQ(w.sched.waiting().front(), c);  // the seq cap keeps C out
  w.finish_step(o1);

  // Decode of A first, then the rest of B's prompt; C still waits for a running slot.
  SchedulerOutput o2 = w.sched.schedule();
  ASSERT_EQ(o2.scheduled.size(), 2u);
  EXPECT_EQ(o2.scheduled[0].seq, a);
  EXPECT_EQ(o2.scheduled[0].num_tokens, 1);
  EXPECT_EQ(o2.scheduled[1].seq, b);
  EXPECT_EQ(o2.scheduled[1].num_tokens, 2);
  EXPECT_TRUE(o2.scheduled[1].sample);
  EXPECT_EQ(w.sched.running().size(), 2u);
  w.finish_step(o2);

  // A finishes: C is admitted in the same step's leftover budget.
  a->status = SeqStatus::kFinished;
  w.sched.remove(a);
  SchedulerOutput o3 = w.sched.schedule();
  ASSERT_EQ(o3.scheduled.size(), 2u);
  EXPECT_EQ(o3.scheduled[0].seq, b);
  EXPECT_EQ(o3.scheduled[1].seq, c);
  EXPECT_EQ(o3.scheduled[1].num_tokens, 5);
  EXPECT_LE(o3.num_batched_tokens, 8);
}

TEST(Scheduler, scheduler_decodes_go_before_prefill_chunks) {
  World w(64, 4, SchedulerConfig{8, 4, true});
  Sequence* a = w.add(2);
  Sequence* b = w.add(2);
  SchedulerOutput o1 = w.sched.schedule();
  ASSERT_EQ(o1.scheduled.size(), 2u);
  w.finish_step(o1);
  Sequence* c = w.add(10);
  // Every step: both decodes first, then C's prompt in chunks of whatever budget is left.
  for (int step = 0; step < 5; ++step) {
    SchedulerOutput o = w.sched.schedule();
    ASSERT_EQ(o.scheduled.size(), 3u);
    EXPECT_EQ(o.scheduled[0].seq, a);
    EXPECT_EQ(o.scheduled[0].num_tokens, 1);
    EXPECT_EQ(o.scheduled[1].seq, b);
    EXPECT_EQ(o.scheduled[1].num_tokens, 1);
    EXPECT_EQ(o.scheduled[2].seq, c);
    EXPECT_EQ(o.scheduled[2].num_tokens, 2) << step;
    EXPECT_EQ(o.scheduled[2].sample, step == 4);  // the chunk that reaches the prompt's end samples
    EXPECT_EQ(o.num_batched_tokens, 4);
    w.finish_step(o);
  }
}

TEST(Scheduler, scheduler_preempts_newest_when_blocks_run_out) {
  World w(6, 2, SchedulerConfig{8, 64, true});
  Sequence* a = w.add(3);
  Sequence* b = w.add(3);
  Sequence* c = w.add(3);
  SchedulerOutput o1 = w.sched.schedule();  // 2 blocks each: the cache is full
  ASSERT_EQ(o1.scheduled.size(), 3u);
  EXPECT_EQ(w.bm.num_free_blocks(), 0);
  w.finish_step(o1);
  SchedulerOutput o2 = w.sched.schedule();  // position 3 still fits the second block
  ASSERT_EQ(o2.scheduled.size(), 3u);
  EXPECT_TRUE(o2.preempted.empty());
  w.finish_step(o2);

  // Position 4 needs a third block for everyone: C (newest) is preempted to make room.
  SchedulerOutput o3 = w.sched.schedule();
  ASSERT_EQ(o3.preempted.size(), 1u);
  EXPECT_EQ(o3.preempted[0], c);
  EXPECT_EQ(c->status, SeqStatus::kWaiting);
  EXPECT_EQ(c->num_computed, 0);
  EXPECT_TRUE(c->block_table.empty());
  EXPECT_EQ(c->num_preemptions, 1);
  EXPECT_EQ(w.sched.waiting().front(), c);
  ASSERT_EQ(o3.scheduled.size(), 2u);
  EXPECT_EQ(o3.scheduled[0].seq, a);
  EXPECT_EQ(o3.scheduled[1].seq, b);
  EXPECT_EQ(w.sched.num_preemptions(), 1);
  w.finish_step(o3);

  // When B finishes, C comes back and re-prefills prompt + generated tokens.
  b->status = SeqStatus::kFinished;
  w.sched.remove(b);
  SchedulerOutput o4 = w.sched.schedule();
  ASSERT_EQ(o4.scheduled.size(), 2u);
  EXPECT_EQ(o4.scheduled[1].seq, c);
  EXPECT_EQ(o4.scheduled[1].num_tokens, 5);  // 3 prompt + 2 generated
  EXPECT_TRUE(o4.scheduled[1].sample);
  w.finish_step(o4);
}

TEST(Scheduler, scheduler_preempts_itself_when_no_unscheduled_victim_is_left) {
  World w(4, 2, SchedulerConfig{8, 5, true});
  Sequence* a = w.add(3);
  Sequence* b = w.add(6);
  SchedulerOutput o1 = w.sched.schedule();  // A whole (2 blocks), B's first chunk of 2 (1 block)
  ASSERT_EQ(o1.scheduled.size(), 2u);
  EXPECT_EQ(o1.scheduled[1].num_tokens, 2);
  w.finish_step(o1);
  // A's decode is scheduled first; B's next chunk needs 2 more blocks, 1 is free, and the only
  // other running sequence is already in the batch, so B preempts itself (never A's decision).
  SchedulerOutput o2 = w.sched.schedule();
  ASSERT_EQ(o2.preempted.size(), 1u);
  EXPECT_EQ(o2.preempted[0], b);
  ASSERT_EQ(o2.scheduled.size(), 1u);
  EXPECT_EQ(o2.scheduled[0].seq, a);
  EXPECT_EQ(b->num_computed, 0);
  EXPECT_EQ(w.sched.waiting().front(), b);
  w.finish_step(o2);
  EXPECT_EQ(a->status, SeqStatus::kRunning);
}

TEST(Scheduler, scheduler_leaves_a_sequence_whose_final_token_is_in_flight_alone) {
  World w(6, 2, SchedulerConfig{8, 64, true});
  Sequence* a = w.add(3);
  Sequence* b = w.add(3);
  Sequence* c = w.add(3);
  w.finish_step(w.sched.schedule());  // 2 blocks each: the cache is full
  w.finish_step(w.sched.schedule());  // position 3 still fits the second block
  // C's last token is in flight (async scheduling): it is neither scheduled nor a victim, so
  // when A and B need a third block, B (the newest other) is preempted instead, then A takes
  // the freed blocks.
  c->final_token_pending = true;
  SchedulerOutput o = w.sched.schedule();
  ASSERT_EQ(o.scheduled.size(), 1u);
  EXPECT_EQ(o.scheduled[0].seq, a);
  ASSERT_EQ(o.preempted.size(), 1u);
  EXPECT_EQ(o.preempted[0], b);
  EXPECT_EQ(c->status, SeqStatus::kRunning);
  EXPECT_EQ(c->block_table.size(), 2u);
  w.finish_step(o);
}

TEST(Scheduler, scheduler_without_chunked_prefill_schedules_whole_prompts) {
  World w(64, 4, SchedulerConfig{8, 10, false});
  w.add(6);
  Sequence* b = w.add(6);
  SchedulerOutput o1 = w.sched.schedule();
  ASSERT_EQ(o1.scheduled.size(), 1u);  // B does not fit the remaining 4 tokens and is not split
  EXPECT_EQ(w.sched.waiting().front(), b);
  w.finish_step(o1);
  SchedulerOutput o2 = w.sched.schedule();
  ASSERT_EQ(o2.scheduled.size(), 2u);
  EXPECT_EQ(o2.scheduled[1].num_tokens, 6);
  EXPECT_EQ(o2.num_batched_tokens, 7);
}

TEST(Scheduler, scheduler_admission_uses_prefix_cache_and_never_half_admits) {
  World w(5, 4, SchedulerConfig{8, 64, true}, /*prefix_caching=*/true);
  Sequence* a = w.add(9);  // 3 blocks
  SchedulerOutput o1 = w.sched.schedule();
  w.finish_step(o1);
  Sequence* b = w.add(9);  // same prompt: 8 tokens cached, 1 to compute, in A's 3rd block? no: own
  SchedulerOutput o2 = w.sched.schedule();
  ASSERT_EQ(o2.scheduled.size(), 2u);
  EXPECT_EQ(o2.scheduled[1].seq, b);
  EXPECT_EQ(b->num_computed, 8);
  EXPECT_EQ(o2.scheduled[1].num_tokens, 1);
  EXPECT_EQ(w.bm.cache_hit_tokens(), 8);
  w.finish_step(o2);
  // C needs 3 fresh blocks, only 1 is free: it waits and holds nothing.
  Sequence* c = w.add(9, 30);
  SchedulerOutput o3 = w.sched.schedule();
  EXPECT_EQ(c->status, SeqStatus::kWaiting);
  EXPECT_TRUE(c->block_table.empty());
  for (const auto& s : o3.scheduled) EXPECT_NE(s.seq, c);
  (void)a;
}

}  // namespace
}  // namespace mpserve::engine
