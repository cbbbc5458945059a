// Engine::Impl: step() = schedule -> build the backend batch -> run -> post-process.
#include "engine/engine.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <unordered_map>

#include "common/check.h"
#include "engine/block_manager.h"
#include "engine/scheduler.h"
#include "engine/sequence.h"

namespace mpserve::engine {

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kLength:
      return "length";
    case FinishReason::kAborted:
      return "abort";
    case FinishReason::kNone:
      break;
  }
  return "";
}

namespace {

using Clock = std::chrono::steady_clock;

SchedulerConfig scheduler_config(const EngineOptions& opts) {
  SchedulerConfig c;
  c.max_num_seqs = opts.backend.max_num_seqs;
  c.max_num_batched_tokens = opts.backend.max_num_batched_tokens;
  c.enable_chunked_prefill = opts.enable_chunked_prefill;
  return c;
}

// note: the study knob emulates a CPU-bound engine, so it must burn the core, not sleep.
void busy_wait_us(int64_t us) {
  if (us <= 0) return;
  const auto until = Clock::now() + std::chrono::microseconds(us);
  while (Clock::now() < until) {
  }
}

}  // namespace

struct Engine::Impl {
  Impl(const EngineOptions& o, std::unique_ptr<backend::Backend> b, const tokenizer::Tokenizer& t)
      : opts(o),
        backend(std::move(b)),
        tok(t),
        blocks(backend->num_kv_blocks(), backend->block_size(), o.enable_prefix_caching),
        scheduler(scheduler_config(o), &blocks),
        vocab_size(static_cast<int32_t>(backend->config().vocab_size)) {
    eos_ids = backend->config().eos_token_ids;
    if (auto e = tok.eos_token_id()) eos_ids.push_back(*e);
  }

  Status validate(const GenerationRequest& r) const;
  std::vector<RequestOutput> step();
  void append_token(Sequence& seq, int32_t token);
  void finish(Sequence& seq, FinishReason reason, bool release_text);
  RequestOutput take_output(Sequence& seq);
  std::vector<const Sequence*> live() const;

  EngineOptions opts;
  int64_t finished_requests = 0;  // for debug_fault_after_requests
  std::unique_ptr<backend::Backend> backend;
  const tokenizer::Tokenizer& tok;
  BlockManager blocks;
  Scheduler scheduler;
  const int32_t vocab_size;
  std::vector<int32_t> eos_ids;
  std::unordered_map<uint64_t, std::unique_ptr<Sequence>> seqs;
  // Outputs of aborted requests, reported by the next step().
  std::vector<RequestOutput> aborted;
  uint64_t next_id = 1;
  EngineStats stats;
};

Status Engine::Impl::validate(const GenerationRequest& r) const {
  const auto& b = opts.backend;
  const int64_t prompt = static_cast<int64_t>(r.prompt.size());
  if (prompt == 0) return Status::error("prompt is empty");
  for (size_t i = 0; i < r.prompt.size(); ++i) {
    if (r.prompt[i] < 0 || r.prompt[i] >= vocab_size) {
      return Status::errorf("prompt token {} at index {} is outside the vocabulary [0, {})", r.prompt[i], i,
                            vocab_size);
    }
  }
  if (r.max_tokens < 1) return Status::errorf("max_tokens must be >= 1, got {}", r.max_tokens);
  if (prompt + r.max_tokens > b.max_model_len) {
    return Status::errorf("prompt ({} tokens) + max_tokens ({}) exceeds max_model_len {}", prompt, r.max_tokens,
                          b.max_model_len);
  }
  if (blocks.blocks_for_tokens(prompt + r.max_tokens) > blocks.num_total_blocks()) {
    return Status::errorf("prompt ({} tokens) + max_tokens ({}) can never fit the KV cache ({} blocks of {} tokens)",
                          prompt, r.max_tokens, blocks.num_total_blocks(), blocks.block_size());
  }
  // note: without chunked prefill a recompute after preemption runs prompt + generated tokens
  // in one step, so that must fit the token budget.
  if (!opts.enable_chunked_prefill && prompt + r.max_tokens - 1 > b.max_num_batched_tokens) {
    return Status::errorf(
        "prompt ({} tokens) + max_tokens ({}) exceeds max_num_batched_tokens {} + 1 with chunked prefill off", prompt,
        r.max_tokens, b.max_num_batched_tokens);
  }
  const auto& s = r.sampling;
  if (!(s.temperature >= 0.0f) || !std::isfinite(s.temperature)) {
    return Status::errorf("temperature must be a finite number >= 0, got {}", s.temperature);
  }
  if (!(s.top_p > 0.0f && s.top_p <= 1.0f)) return Status::errorf("top_p must be in (0, 1], got {}", s.top_p);
  if (s.top_k < 0) return Status::errorf("top_k must be >= 0 (0 = off), got {}", s.top_k);
  for (size_t i = 0; i < r.stop.size(); ++i) {
    if (r.stop[i].empty()) return Status::errorf("stop string {} is empty", i);
  }
  for (int32_t t : r.stop_token_ids) {
    if (t < 0 || t >= vocab_size) return Status::errorf("stop token id {} is outside the vocabulary", t);
  }
  if (static_cast<int64_t>(scheduler.waiting().size()) >= opts.max_waiting) {
    return Status::errorf("engine overloaded: {} requests already waiting (max_waiting)", scheduler.waiting().size());
  }
  return Status::ok();
}

std::vector<const Sequence*> Engine::Impl::live() const {
  std::vector<const Sequence*> v;
  v.reserve(seqs.size());
  for (const auto& [id, s] : seqs) v.push_back(s.get());
  return v;
}

void Engine::Impl::finish(Sequence& seq, FinishReason reason, bool release_text) {
  if (release_text) {
    bool hit = false;
    seq.out_text += seq.stop_matcher.feed(seq.detok.flush(), &hit);
    if (hit) {
      reason = FinishReason::kStop;
    } else {
      seq.out_text += seq.stop_matcher.finish();
    }
  }
  seq.status = SeqStatus::kFinished;
  seq.finish_reason = reason;
}

void Engine::Impl::append_token(Sequence& seq, int32_t token) {
  seq.tokens.push_back(token);
  seq.out_tokens.push_back(token);
  ++stats.generation_tokens_total;
  const auto& r = seq.request;
  const bool is_eos = !r.ignore_eos && std::find(eos_ids.begin(), eos_ids.end(), token) != eos_ids.end();
  const bool is_stop_id = std::find(r.stop_token_ids.begin(), r.stop_token_ids.end(), token) != r.stop_token_ids.end();
  if (is_eos || is_stop_id) {
    // The stop token itself is returned as an id but not as text.
    finish(seq, FinishReason::kStop, /*release_text=*/true);
    return;
  }
  bool hit = false;
  seq.out_text += seq.stop_matcher.feed(seq.detok.push(token), &hit);
  if (hit) {
    finish(seq, FinishReason::kStop, /*release_text=*/false);
  } else if (seq.num_generated() >= r.max_tokens || seq.num_tokens() >= opts.backend.max_model_len) {
    finish(seq, FinishReason::kLength, /*release_text=*/true);
  }
}

RequestOutput Engine::Impl::take_output(Sequence& seq) {
  RequestOutput o;
  o.request_id = seq.id;
  o.new_tokens = std::move(seq.out_tokens);
  o.new_text = std::move(seq.out_text);
  o.logits = std::move(seq.out_logits);
  seq.out_tokens.clear();
  seq.out_text.clear();
  seq.out_logits.clear();
  o.finished = seq.finished();
  o.finish_reason = seq.finish_reason;
  o.prompt_tokens = seq.num_prompt_tokens;
  o.completion_tokens = seq.num_generated();
  return o;
}

std::vector<RequestOutput> Engine::Impl::step() {
  const auto t0 = Clock::now();
  busy_wait_us(opts.step_cpu_us);
  std::vector<RequestOutput> outputs = std::move(aborted);
  aborted.clear();

  SchedulerOutput sched = scheduler.schedule();
  if (opts.debug_fault_after_requests >= 0 && finished_requests >= opts.debug_fault_after_requests && !sched.empty()) {
    backend->debug_inject_fault();
  }
  if (!sched.empty()) {
    // Build the batch. Spans point into the sequences, which do not change until the step returns.
    backend::Batch batch;
    batch.entries.reserve(sched.scheduled.size());
    bool want_logits = false;
    for (const ScheduledSeq& s : sched.scheduled) {
      Sequence& seq = *s.seq;
      backend::BatchEntry e;
      e.seq_id = static_cast<int64_t>(seq.id);
      e.context_len = seq.num_computed;
      e.tokens = std::span<const int32_t>(seq.tokens.data() + seq.num_computed, s.num_tokens);
      e.block_table = std::span<const int32_t>(seq.block_table.data(),
                                               blocks.blocks_for_tokens(int64_t{seq.num_computed} + s.num_tokens));
      e.sample = s.sample;
      e.sampling = seq.request.sampling;
      e.num_generated = seq.num_generated();
      want_logits |= s.sample && seq.request.want_logits;
      batch.entries.push_back(e);
    }
    backend::StepOutput result;
    backend->step(batch, want_logits, &result);

    // Post-process: KV written, sampled tokens appended, stop conditions checked.
    const size_t num_sampled =
        std::count_if(sched.scheduled.begin(), sched.scheduled.end(), [](const ScheduledSeq& s) { return s.sample; });
    MPS_CHECK_MSG(result.tokens.size() == num_sampled, "backend returned {} tokens for {} sampled entries",
                  result.tokens.size(), num_sampled);
    const size_t vocab = want_logits && num_sampled > 0 ? result.logits.size() / num_sampled : 0;
    size_t k = 0;
    for (const ScheduledSeq& s : sched.scheduled) {
      Sequence& seq = *s.seq;
      seq.num_computed += s.num_tokens;
      blocks.on_computed(seq);
      if (!s.sample) continue;
      if (seq.request.want_logits && vocab > 0) {
        seq.out_logits.insert(seq.out_logits.end(), result.logits.begin() + k * vocab,
                              result.logits.begin() + (k + 1) * vocab);
      }
      append_token(seq, result.tokens[k++]);
      outputs.push_back(take_output(seq));
      if (seq.finished()) {
        ++finished_requests;
        scheduler.remove(&seq);
        seqs.erase(seq.id);
      }
    }
  }

  ++stats.steps;
  stats.last_step_ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
  return outputs;
}

Engine::Engine(const EngineOptions& opts, std::unique_ptr<backend::Backend> backend,
               const tokenizer::Tokenizer& tokenizer)
    : impl_(std::make_unique<Impl>(opts, std::move(backend), tokenizer)) {}

Engine::~Engine() = default;

Result<uint64_t> Engine::add_request(GenerationRequest req) {
  MPS_RETURN_IF_ERROR(impl_->validate(req));
  const uint64_t id = impl_->next_id++;
  impl_->stats.prompt_tokens_total += static_cast<int64_t>(req.prompt.size());
  auto seq = std::make_unique<Sequence>(id, id, std::move(req), impl_->tok);
  impl_->scheduler.add(seq.get());
  impl_->seqs.emplace(id, std::move(seq));
  return id;
}

void Engine::abort_request(uint64_t request_id) {
  auto it = impl_->seqs.find(request_id);
  if (it == impl_->seqs.end()) return;
  Sequence& seq = *it->second;
  impl_->scheduler.remove(&seq);
  seq.status = SeqStatus::kFinished;
  seq.finish_reason = FinishReason::kAborted;
  // Tokens and text not yet reported are dropped: the client asked to stop.
  seq.out_tokens.clear();
  seq.out_text.clear();
  seq.out_logits.clear();
  impl_->aborted.push_back(impl_->take_output(seq));
  impl_->seqs.erase(it);
}

bool Engine::has_unfinished() const { return !impl_->seqs.empty() || !impl_->aborted.empty(); }

std::vector<RequestOutput> Engine::step() { return impl_->step(); }

EngineStats Engine::stats() const {
  EngineStats s = impl_->stats;
  s.num_running = static_cast<int32_t>(impl_->scheduler.running().size());
  s.num_waiting = static_cast<int32_t>(impl_->scheduler.waiting().size());
  s.kv_blocks_total = impl_->blocks.num_total_blocks();
  s.kv_blocks_used = impl_->blocks.num_used_blocks();
  s.num_preemptions = impl_->scheduler.num_preemptions();
  s.prefix_cache_hit_tokens = impl_->blocks.cache_hit_tokens();
  return s;
}

const backend::Backend& Engine::backend() const { return *impl_->backend; }

const EngineOptions& Engine::options() const { return impl_->opts; }

void Engine::check_invariants() const {
  auto live = impl_->live();
  impl_->blocks.check_invariants(live);
  const auto& sch = impl_->scheduler;
  MPS_CHECK_MSG(sch.running().size() + sch.waiting().size() == impl_->seqs.size(),
                "{} running + {} waiting but {} live sequences", sch.running().size(), sch.waiting().size(),
                impl_->seqs.size());
  MPS_CHECK(static_cast<int32_t>(sch.running().size()) <= sch.config().max_num_seqs);
  for (const Sequence* s : sch.running()) MPS_CHECK_MSG(s->status == SeqStatus::kRunning, "seq {}", s->id);
  for (const Sequence* s : sch.waiting()) MPS_CHECK_MSG(s->status == SeqStatus::kWaiting, "seq {}", s->id);
}

}  // namespace mpserve::engine
