#include "engine/scheduler.h"

#include <algorithm>

#include "common/check.h"

namespace mpserve::engine {

Scheduler::Scheduler(const SchedulerConfig& config, BlockManager* blocks) : config_(config), blocks_(blocks) {
  MPS_CHECK(config_.max_num_seqs > 0 && config_.max_num_batched_tokens > 0);
}

void Scheduler::add(Sequence* seq) {
  MPS_CHECK(seq->status == SeqStatus::kWaiting && seq->block_table.empty());
  waiting_.push_back(seq);
}

void Scheduler::remove(Sequence* seq) {
  if (auto it = std::find(running_.begin(), running_.end(), seq); it != running_.end()) running_.erase(it);
  if (auto it = std::find(waiting_.begin(), waiting_.end(), seq); it != waiting_.end()) waiting_.erase(it);
  blocks_->free(*seq);
}

void Scheduler::insert_running(Sequence* seq) {
  auto pos = std::upper_bound(running_.begin(), running_.end(), seq,
                              [](const Sequence* a, const Sequence* b) { return a->arrival < b->arrival; });
  running_.insert(pos, seq);
}

void Scheduler::preempt(Sequence* seq, SchedulerOutput* out) {
  running_.erase(std::find(running_.begin(), running_.end(), seq));
  blocks_->free(*seq);
  seq->status = SeqStatus::kWaiting;
  ++seq->num_preemptions;
  ++num_preemptions_;
  waiting_.push_front(seq);
  out->preempted.push_back(seq);
}

SchedulerOutput Scheduler::schedule() {
  SchedulerOutput out;
  int64_t budget = config_.max_num_batched_tokens;
  // note: a round counter stamped on each scheduled sequence instead of a set of them: at batch
  // 256 the set cost a node allocation per sequence and step, on the host path between two
  // device steps (EngineHostBench).
  const uint64_t round = ++round_;
  out.scheduled.reserve(running_.size() + std::min<size_t>(waiting_.size(), size_t(config_.max_num_seqs)));

  auto commit = [&](Sequence* seq, int32_t n) {
    out.scheduled.push_back({seq, n, seq->num_computed + n == seq->num_tokens()});
    out.num_batched_tokens += n;
    budget -= n;
    seq->scheduled_round = round;
  };

  // Running sequences: decodes first, then prefill chunks; arrival order within each group.
  // note: a copy, since preemption edits running_ below; kept in a member so that steps reuse
  // its storage (stable_partition also allocated a buffer every step).
  order_.clear();
  for (Sequence* s : running_)
    if (s->num_uncomputed() == 1) order_.push_back(s);
  for (Sequence* s : running_)
    if (s->num_uncomputed() != 1) order_.push_back(s);
  for (Sequence* seq : order_) {
    if (budget <= 0) break;
    if (seq->status != SeqStatus::kRunning) continue;  // preempted earlier in this loop
    if (seq->final_token_pending) continue;            // finishes when the step in flight returns
    const int32_t want = seq->num_uncomputed();
    MPS_CHECK_MSG(want >= 1, "running seq {} has nothing to compute", seq->id);
    const int32_t n = static_cast<int32_t>(std::min<int64_t>(want, budget));
    if (n < want && !config_.enable_chunked_prefill) continue;
    // Fits the KV cache? Make room by preempting the newest sequences not yet scheduled.
    bool self_preempted = false;
    while (!blocks_->can_append(*seq, n)) {
      Sequence* victim = nullptr;
      for (auto it = running_.rbegin(); it != running_.rend(); ++it) {
        if (*it != seq && (*it)->scheduled_round != round && !(*it)->final_token_pending) {
          victim = *it;
          break;
        }
      }
      if (victim == nullptr) {
        preempt(seq, &out);
        self_preempted = true;
        break;
      }
      preempt(victim, &out);
    }
    if (self_preempted) continue;
    blocks_->append_slots(*seq, n);
    commit(seq, n);
  }

  // Waiting sequences, in order, while nothing was preempted (memory is tight then) and the
  // head fits both the sequence cap, the token budget and the KV cache.
  while (out.preempted.empty() && !waiting_.empty() && budget > 0 &&
         static_cast<int32_t>(running_.size()) < config_.max_num_seqs) {
    Sequence* seq = waiting_.front();
    const int32_t cached = blocks_->num_cached_tokens(*seq);
    const int32_t want = seq->num_tokens() - cached;
    const int32_t n = static_cast<int32_t>(std::min<int64_t>(want, budget));
    if (n < want && !config_.enable_chunked_prefill) break;  // fits the token budget?
    if (!blocks_->can_allocate(*seq, n)) break;               // fits the KV cache?
    waiting_.pop_front();
    blocks_->allocate(*seq, n);
    MPS_CHECK(seq->num_computed == cached);
    seq->status = SeqStatus::kRunning;
    insert_running(seq);
    commit(seq, n);
  }
  return out;
}

}  // namespace mpserve::engine
