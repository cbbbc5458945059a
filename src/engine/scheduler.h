// Continuous batching: which sequences run in the next step, and how many tokens each.
//
// Each step has a token budget (max_num_batched_tokens) and a cap on running sequences
// (max_num_seqs). Running sequences go first: decodes (one token each), then sequences still
// prefilling in chunks. Waiting sequences are then admitted in arrival order while both the KV
// cache and the budget allow; with chunked prefill a long prompt takes whatever budget is left
// and continues next step. Every decision is checked against the KV cache first (can_allocate /
// can_append) and only then committed, so none is half-applied.
//
// When a running sequence cannot get a block, the newest running sequence not yet scheduled in
// this step is preempted by recompute: its blocks are freed and it goes back to the front of
// the waiting queue, to re-prefill prompt + generated tokens later (its full blocks usually
// still sit in the prefix cache). If no such other sequence exists it preempts itself.
// note: already-scheduled sequences are never victims, so a decision is never undone.
//
// Async scheduling: schedule() may run while the previous step is still on the device. The
// engine has then already advanced every sequence of that step as if it had run (num_computed,
// and a placeholder for each token it samples), so the scheduler sees the state the step will
// leave. A sequence whose last token is in flight (final_token_pending) is neither scheduled
// nor chosen as a victim: it finishes when the step is collected.
#pragma once

#include <cstdint>
#include <deque>
#include <vector>

#include "engine/block_manager.h"
#include "engine/sequence.h"

namespace mpserve::engine {

struct SchedulerConfig {
  int32_t max_num_seqs = 256;
  int32_t max_num_batched_tokens = 2048;
  bool enable_chunked_prefill = true;
};

struct ScheduledSeq {
  Sequence* seq = nullptr;
  // Runs tokens [seq->num_computed, seq->num_computed + num_tokens).
  int32_t num_tokens = 0;
  // The chunk reaches the last token, so the step samples the next one.
  bool sample = false;
};

struct SchedulerOutput {
  std::vector<ScheduledSeq> scheduled;  // decodes first, then prefill chunks
  std::vector<Sequence*> preempted;     // preempted in this step (now waiting)
  int64_t num_batched_tokens = 0;
  bool empty() const { return scheduled.empty(); }
};

class Scheduler {
 public:
  Scheduler(const SchedulerConfig& config, BlockManager* blocks);

  // Queues a new sequence at the back of the waiting queue.
  void add(Sequence* seq);
  // Removes a waiting or running sequence (finished or aborted) and frees its blocks now.
  void remove(Sequence* seq);
  SchedulerOutput schedule();

  const std::deque<Sequence*>& waiting() const { return waiting_; }
  // Running sequences in arrival order.
  const std::vector<Sequence*>& running() const { return running_; }
  int64_t num_preemptions() const { return num_preemptions_; }
  const SchedulerConfig& config() const { return config_; }

 private:
  void preempt(Sequence* seq, SchedulerOutput* out);
  void insert_running(Sequence* seq);

  const SchedulerConfig config_;
  BlockManager* blocks_;
  std::deque<Sequence*> waiting_;
  std::vector<Sequence*> running_;
  std::vector<Sequence*> order_;  // schedule()'s scratch: running_ in scheduling order
  int64_t num_preemptions_ = 0;
  uint64_t round_ = 0;  // schedule() calls; Sequence::scheduled_round marks membership of a step
};

}  // namespace mpserve::engine
