// Engine::Impl: step() = schedule -> build the backend batch -> run -> post-process.
//
// Async scheduling pipelines two steps: with step t in flight, step() pays the injected host
// cost, schedules and builds step t+1 against the state step t will leave (advance() ran at
// launch), then
//   - where the backend takes t's sampled tokens on the device (max_steps_in_flight() == 2; no
//     logits wanted; every placeholder is a one-token decode input): launches t+1 at once, then
//     collects and post-processes t. A sequence t's token ends still runs its row of t+1 (the
//     result is dropped): the device does not idle between steps;
//   - else: collects t, writes its tokens over the placeholders, finishes what they end, drops
//     that from t+1, and launches t+1; the text and outputs of the sequences that go on are made
//     while t+1 runs. The device idles only between collect and launch.
#include "engine/engine.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <optional>
#include <unordered_map>

#include "common/check.h"
#include "engine/block_manager.h"
#include "engine/scheduler.h"
#include "engine/sequence.h"
#include "tokenizer/token_piece_table.h"

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

// Stands in for a token sampled by the step in flight until collect() returns it.
// note: negative so that a placeholder reaching a backend or a prefix-cache hash is caught.
constexpr int32_t kPlaceholderToken = -1;

double ms_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

// One scheduled step, from scheduling to post-processing.
struct StepPlan {
  std::vector<ScheduledSeq> scheduled;
  backend::Batch batch;  // entry i runs scheduled[i]; spans into the sequences
  // Per entry: index in seq->tokens of the token the step samples (set by advance()); -1: none.
  std::vector<int32_t> token_index;
  bool want_logits = false;
  bool empty() const { return scheduled.empty(); }
};

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

  ~Impl() {
    // The device may still be reading this step's inputs: let it finish before they go.
    if (in_flight) {
      backend::StepOutput discard;
      backend->collect(&discard);
    }
  }

  Status validate(const GenerationRequest& r) const;
  std::vector<RequestOutput> step();
  std::vector<RequestOutput> step_sync();
  std::vector<RequestOutput> step_async(Clock::time_point t0);
  bool launch_ahead_ok(StepPlan& next) const;
  backend::StepOutput collect(Clock::time_point t0);
  StepPlan plan_step();
  void launch(StepPlan plan);
  void advance(StepPlan& plan);
  void post_process(const StepPlan& plan, const backend::StepOutput& result, std::vector<RequestOutput>* outputs,
                    std::vector<uint64_t>* finished_ids, std::vector<size_t>* deferred = nullptr);
  void post_process_deferred(const StepPlan& plan, const std::vector<size_t>& deferred,
                             std::vector<RequestOutput>* outputs);
  bool is_stop_token(const Sequence& seq, int32_t token) const;
  bool at_length_limit(const Sequence& seq, int64_t num_tokens) const;
  bool can_finish(const Sequence& seq, int32_t token, int64_t num_tokens) const;
  bool push_text(Sequence& seq, int32_t token);
  void append_text(Sequence& seq, int32_t token);
  bool in_flight_holds(const Sequence* seq, int32_t* token_index) const;
  void on_sampled(Sequence& seq, int32_t token, int64_t num_tokens);
  void finish(Sequence& seq, FinishReason reason, bool release_text);
  RequestOutput take_output(Sequence& seq, int64_t num_tokens);
  std::vector<const Sequence*> live() const;

  EngineOptions opts;
  int64_t finished_requests = 0;  // for debug_fault_after_requests
  std::string text_scratch;       // on_sampled's newly decoded text, reused across tokens
  std::unique_ptr<backend::Backend> backend;
  const tokenizer::Tokenizer& tok;
  BlockManager blocks;
  Scheduler scheduler;
  const int32_t vocab_size;
  std::vector<int32_t> eos_ids;
  std::unordered_map<uint64_t, std::unique_ptr<Sequence>> seqs;
  // Outputs of aborted requests, reported by the next step().
  std::vector<RequestOutput> aborted;
  // Async scheduling: the step launched and not yet collected, already advanced.
  std::optional<StepPlan> in_flight;
  // Sequences aborted while in_flight referred to them; destroyed once it is post-processed.
  std::vector<std::unique_ptr<Sequence>> retired;
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

// An EOS (unless ignored) or one of the request's stop ids.
bool Engine::Impl::is_stop_token(const Sequence& seq, int32_t token) const {
  const auto& r = seq.request;
  return (!r.ignore_eos && std::find(eos_ids.begin(), eos_ids.end(), token) != eos_ids.end()) ||
         std::find(r.stop_token_ids.begin(), r.stop_token_ids.end(), token) != r.stop_token_ids.end();
}

// The sequence's first num_tokens tokens (through a sampled one) reach max_tokens or max_model_len.
// note: a count, not seq.num_tokens(): a step launched ahead may have appended the next placeholder.
bool Engine::Impl::at_length_limit(const Sequence& seq, int64_t num_tokens) const {
  return num_tokens - seq.num_prompt_tokens >= seq.request.max_tokens || num_tokens >= opts.backend.max_model_len;
}

// Whether `token` can end `seq` at this step: an EOS or stop id, the last token by length, or any
// token of a request with stop strings (its text decides).
bool Engine::Impl::can_finish(const Sequence& seq, int32_t token, int64_t num_tokens) const {
  return !seq.request.stop.empty() || is_stop_token(seq, token) || at_length_limit(seq, num_tokens);
}

// The token's text, through the stop matcher into out_text; whether a stop string matched.
bool Engine::Impl::push_text(Sequence& seq, int32_t token) {
  if (seq.request.stop.empty()) {  // no stop strings, nothing held back: straight to the output
    seq.detok.push_to(token, &seq.out_text);
    return false;
  }
  bool hit = false;
  // note: through a reused scratch string: at batch 256 a string per token and step was a
  // measurable share of the host time between device steps (EngineHostBench).
  text_scratch.clear();
  seq.detok.push_to(token, &text_scratch);
  seq.stop_matcher.feed_to(text_scratch, &seq.out_text, &hit);
  return hit;
}

void Engine::Impl::on_sampled(Sequence& seq, int32_t token, int64_t num_tokens) {
  seq.out_tokens.push_back(token);
  ++stats.generation_tokens_total;
  if (is_stop_token(seq, token)) {
    // The stop token itself is returned as an id but not as text.
    finish(seq, FinishReason::kStop, /*release_text=*/true);
    return;
  }
  if (push_text(seq, token)) {
    finish(seq, FinishReason::kStop, /*release_text=*/false);
  } else if (at_length_limit(seq, num_tokens)) {
    finish(seq, FinishReason::kLength, /*release_text=*/true);
  }
}

// on_sampled for a token that cannot finish its sequence (!can_finish): its output and text.
void Engine::Impl::append_text(Sequence& seq, int32_t token) {
  seq.out_tokens.push_back(token);
  ++stats.generation_tokens_total;
  const bool hit = push_text(seq, token);
  MPS_CHECK_MSG(!hit, "seq {}: a stop string matched in a request without stop strings", seq.id);
}

// The sequence's new tokens, text and logits so far; num_tokens: its tokens through the last one
// reported (a step launched ahead may have appended the next placeholder already).
RequestOutput Engine::Impl::take_output(Sequence& seq, int64_t num_tokens) {
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
  o.completion_tokens = static_cast<int32_t>(num_tokens - seq.num_prompt_tokens);
  return o;
}

StepPlan Engine::Impl::plan_step() {
  StepPlan plan;
  SchedulerOutput sched = scheduler.schedule();
  if (opts.debug_fault_after_requests >= 0 && finished_requests >= opts.debug_fault_after_requests && !sched.empty()) {
    backend->debug_inject_fault();
  }
  plan.scheduled = std::move(sched.scheduled);
  plan.batch.entries.reserve(plan.scheduled.size());
  for (const ScheduledSeq& s : plan.scheduled) {
    const Sequence& seq = *s.seq;
    backend::BatchEntry e;
    e.seq_id = static_cast<int64_t>(seq.id);
    e.context_len = seq.num_computed;
    e.tokens = std::span<const int32_t>(seq.tokens.data() + seq.num_computed, s.num_tokens);
    e.block_table = std::span<const int32_t>(seq.block_table.data(),
                                             blocks.blocks_for_tokens(int64_t{seq.num_computed} + s.num_tokens));
    e.table_epoch = seq.table_epoch;
    e.sample = s.sample;
    e.sampling = seq.request.sampling;
    e.num_generated = seq.num_generated();
    plan.want_logits |= s.sample && seq.request.want_logits;
    plan.batch.entries.push_back(e);
  }
  return plan;
}

// Moves every sequence of a launched step to the state the step leaves: its tokens computed
// and, where it samples, a placeholder for the new token. Only after launch(): the batch's
// spans may dangle once tokens grow.
void Engine::Impl::advance(StepPlan& plan) {
  plan.token_index.assign(plan.scheduled.size(), -1);
  for (size_t i = 0; i < plan.scheduled.size(); ++i) {
    const ScheduledSeq& s = plan.scheduled[i];
    Sequence& seq = *s.seq;
    seq.num_computed += s.num_tokens;
    if (!s.sample) continue;
    plan.token_index[i] = seq.num_tokens();
    seq.tokens.push_back(kPlaceholderToken);
    seq.final_token_pending = at_length_limit(seq, seq.num_tokens());
  }
}

// Writes the step's sampled tokens, offers completed blocks to the prefix cache and checks stop
// conditions. In async mode a sequence may since have been aborted (skipped: already reported)
// or preempted while the next step was scheduled (it still gets its token).
// deferred (async steps): entries whose token cannot finish their sequence (no EOS or stop id, not
// the last by length, no stop strings) get only their token (and logits) written here; their text
// and output come from post_process_deferred() after the next step is launched, in its device time.
void Engine::Impl::post_process(const StepPlan& plan, const backend::StepOutput& result,
                                std::vector<RequestOutput>* outputs, std::vector<uint64_t>* finished_ids,
                                std::vector<size_t>* deferred) {
  const size_t num_sampled = std::count_if(plan.scheduled.begin(), plan.scheduled.end(),
                                           [](const ScheduledSeq& s) { return s.sample; });
  MPS_CHECK_MSG(result.tokens.size() == num_sampled, "backend returned {} tokens for {} sampled entries",
                result.tokens.size(), num_sampled);
  const size_t vocab = plan.want_logits && num_sampled > 0 ? result.logits.size() / num_sampled : 0;
  outputs->reserve(outputs->size() + num_sampled);
  // note: each sampled token's piece is a random read into a table of the whole vocabulary, a
  // cache miss per sequence that the detokenizer would take one after the other; these reads are
  // independent, so issued here together they overlap (EngineHostBench, random tokens).
  tok.piece_table().touch(result.tokens);
  size_t k = 0;
  for (size_t i = 0; i < plan.scheduled.size(); ++i) {
    const ScheduledSeq& s = plan.scheduled[i];
    Sequence& seq = *s.seq;
    const size_t row = s.sample ? k++ : 0;
    if (seq.finished()) continue;  // aborted while in flight, or ended by the step before
    if (!s.sample) {
      blocks.on_computed(seq);
      continue;
    }
    // note: the token goes in before the prefix cache hashes computed tokens: with the next step
    // launched ahead, this token is already one of them (its placeholder sits past them otherwise).
    const int32_t token = result.tokens[row];
    seq.tokens[plan.token_index[i]] = token;
    // (with a step launched ahead the flag belongs to that step's placeholder, past this token)
    if (plan.token_index[i] + 1 == seq.num_tokens()) seq.final_token_pending = false;
    blocks.on_computed(seq);
    if (seq.request.want_logits && vocab > 0) {
      seq.out_logits.insert(seq.out_logits.end(), result.logits.begin() + row * vocab,
                            result.logits.begin() + (row + 1) * vocab);
    }
    const int64_t num_tokens = plan.token_index[i] + 1;  // through this token
    if (deferred && !can_finish(seq, token, num_tokens)) {
      deferred->push_back(i);
      continue;
    }
    on_sampled(seq, token, num_tokens);
    outputs->push_back(take_output(seq, num_tokens));
    if (seq.finished()) {
      ++finished_requests;
      scheduler.remove(&seq);
      finished_ids->push_back(seq.id);
    }
  }
}

// The text part of post_process for the entries it deferred, in plan order. The sequences have
// since been advanced by the next step (a placeholder past the token): nothing here reads their
// length; completion_tokens is the count at the deferred step.
void Engine::Impl::post_process_deferred(const StepPlan& plan, const std::vector<size_t>& deferred,
                                         std::vector<RequestOutput>* outputs) {
  outputs->reserve(outputs->size() + deferred.size());
  for (size_t i : deferred) {
    Sequence& seq = *plan.scheduled[i].seq;
    append_text(seq, seq.tokens[plan.token_index[i]]);
    outputs->push_back(take_output(seq, plan.token_index[i] + 1));
  }
}

bool Engine::Impl::in_flight_holds(const Sequence* seq, int32_t* token_index) const {
  if (!in_flight) return false;
  for (size_t i = 0; i < in_flight->scheduled.size(); ++i) {
    if (in_flight->scheduled[i].seq == seq) {
      *token_index = in_flight->token_index[i];
      return true;
    }
  }
  return false;
}

void Engine::Impl::launch(StepPlan plan) {
  plan.want_logits = false;
  for (size_t i = 0; i < plan.scheduled.size(); ++i) {
    const backend::BatchEntry& e = plan.batch.entries[i];
    plan.want_logits |= e.sample && plan.scheduled[i].seq->request.want_logits;
    MPS_CHECK_MSG(e.prev_sample_row >= 0 ||
                      std::find(e.tokens.begin(), e.tokens.end(), kPlaceholderToken) == e.tokens.end(),
                  "seq {}: launching a step whose input is still a placeholder", e.seq_id);
  }
  backend->launch(plan.batch, plan.want_logits);
  plan.batch.entries.clear();  // its spans may dangle from here on
  advance(plan);
  in_flight = std::move(plan);
}

std::vector<RequestOutput> Engine::Impl::step() {
  const auto t0 = Clock::now();
  busy_wait_us(opts.step_cpu_us);
  std::vector<RequestOutput> outputs = opts.async_scheduling ? step_async(t0) : step_sync();
  ++stats.steps;
  stats.last_step_ms = ms_between(t0, Clock::now());
  return outputs;
}

std::vector<RequestOutput> Engine::Impl::step_sync() {
  std::vector<RequestOutput> outputs = std::move(aborted);
  aborted.clear();
  StepPlan plan = plan_step();
  if (plan.empty()) return outputs;
  backend::StepOutput result;
  backend->step(plan.batch, plan.want_logits, &result);
  advance(plan);
  std::vector<uint64_t> finished_ids;
  post_process(plan, result, &outputs, &finished_ids);
  for (uint64_t id : finished_ids) seqs.erase(id);
  return outputs;
}

// Whether `next` can go to the device before the step in flight is collected, and if so points
// each of its inputs still to be sampled at its row of that step (BatchEntry::prev_sample_row).
bool Engine::Impl::launch_ahead_ok(StepPlan& next) const {
  if (!in_flight || next.empty() || backend->max_steps_in_flight() < 2 || in_flight->want_logits ||
      next.want_logits) {
    return false;
  }
  // The in-flight step's sampled sequences in row order. Steady decoding schedules them in the
  // same order again, so each lookup first tries the row after the last one found; the map is
  // built only when the order changed (admissions, preemptions, finishes).
  std::vector<const Sequence*> sampled;
  sampled.reserve(in_flight->scheduled.size());
  for (const ScheduledSeq& s : in_flight->scheduled) {
    if (s.sample) sampled.push_back(s.seq);
  }
  std::unordered_map<const Sequence*, int32_t> row_of;
  auto find_row = [&](const Sequence* seq, int32_t guess) -> int32_t {
    if (guess < static_cast<int32_t>(sampled.size()) && sampled[size_t(guess)] == seq) return guess;
    if (row_of.empty()) {
      for (size_t r = 0; r < sampled.size(); ++r) row_of.emplace(sampled[r], static_cast<int32_t>(r));
    }
    const auto it = row_of.find(seq);
    return it == row_of.end() ? -1 : it->second;
  };
  std::vector<int32_t> rows(next.scheduled.size(), -1);
  int32_t guess = 0;
  for (size_t i = 0; i < next.scheduled.size(); ++i) {
    const backend::BatchEntry& e = next.batch.entries[i];
    if (std::find(e.tokens.begin(), e.tokens.end(), kPlaceholderToken) == e.tokens.end()) continue;
    // A placeholder anywhere but as a decode step's one input (a recompute after preemption):
    // its token must be on the host first.
    if (e.tokens.size() != 1) return false;
    const int32_t row = find_row(next.scheduled[i].seq, guess);
    if (row < 0) return false;
    rows[i] = row;
    guess = row + 1;
  }
  for (size_t i = 0; i < rows.size(); ++i) next.batch.entries[i].prev_sample_row = rows[i];
  return true;
}

// Collects the oldest step in flight; the host time since t0 (this step() call) overlapped it.
backend::StepOutput Engine::Impl::collect(Clock::time_point t0) {
  const auto t_collect = Clock::now();
  backend::StepOutput result;
  backend->collect(&result);
  stats.async_overlap_last_ms = ms_between(t0, t_collect);
  stats.async_overlap_ms_total += stats.async_overlap_last_ms;
  stats.async_collect_wait_ms_total += ms_between(t_collect, Clock::now());
  return result;
}

std::vector<RequestOutput> Engine::Impl::step_async(Clock::time_point t0) {
  std::vector<RequestOutput> outputs = std::move(aborted);
  aborted.clear();
  StepPlan next = plan_step();

  if (launch_ahead_ok(next)) {
    // t+1 first: the device runs it right after t. Then t is collected and post-processed whole.
    StepPlan done = std::move(*in_flight);
    in_flight.reset();
    launch(std::move(next));
    ++stats.async_launched_ahead;
    const backend::StepOutput result = collect(t0);
    std::vector<uint64_t> finished_ids;
    post_process(done, result, &outputs, &finished_ids);
    retired.clear();  // aborted while t was in flight; t+1 does not run them
    for (uint64_t id : finished_ids) {
      auto it = seqs.find(id);
      int32_t token_index = -1;
      // Ended by t's token but running in t+1: kept until t+1 is post-processed (which skips it).
      if (in_flight_holds(it->second.get(), &token_index)) retired.push_back(std::move(it->second));
      seqs.erase(it);
    }
    return outputs;
  }

  if (in_flight) {
    const backend::StepOutput result = collect(t0);
    const auto t_collected = Clock::now();

    // Tokens, finishes and the outputs of finishing sequences now; the text of the others once
    // step t+1 is on the device (their token cannot end them, so t+1 is theirs either way).
    std::vector<uint64_t> finished_ids;
    std::vector<size_t> deferred;
    StepPlan done = std::move(*in_flight);
    in_flight.reset();
    post_process(done, result, &outputs, &finished_ids, &deferred);
    // What finished at the collected step was scheduled optimistically: take it out again.
    size_t kept = 0;
    for (size_t i = 0; i < next.scheduled.size(); ++i) {
      if (next.scheduled[i].seq->finished()) continue;
      next.scheduled[kept] = next.scheduled[i];
      next.batch.entries[kept] = next.batch.entries[i];
      ++kept;
    }
    next.scheduled.resize(kept);
    next.batch.entries.resize(kept);
    for (uint64_t id : finished_ids) seqs.erase(id);

    if (!next.empty()) launch(std::move(next));
    stats.async_gap_ms_total += ms_between(t_collected, Clock::now());
    post_process_deferred(done, deferred, &outputs);
    retired.clear();
  } else {
    stats.async_overlap_last_ms = 0;
    if (!next.empty()) launch(std::move(next));
  }
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
  // The step in flight may still sample for it: drop the placeholder (the backend holds no span
  // after launch) and keep the sequence until that step is post-processed, which skips it.
  int32_t token_index = -1;
  const bool in_flight = impl_->in_flight_holds(&seq, &token_index);
  if (token_index >= 0) seq.tokens.resize(token_index);
  impl_->aborted.push_back(impl_->take_output(seq, seq.num_tokens()));
  if (in_flight) impl_->retired.push_back(std::move(it->second));
  impl_->seqs.erase(it);
}

bool Engine::has_unfinished() const {
  return !impl_->seqs.empty() || !impl_->aborted.empty() || impl_->in_flight.has_value();
}

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
