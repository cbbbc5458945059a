// One request's state inside the engine: its tokens, how many of them are in the KV cache,
// its block table, and the streaming-text state (detokenizer and held-back stop-string text).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "engine/engine.h"
#include "tokenizer/tokenizer.h"

namespace mpserve::engine {

enum class SeqStatus { kWaiting, kRunning, kFinished };

// Finds stop strings in streamed text. Text that could still become the start of a stop
// string is held back until the next piece resolves it; a matched stop string and anything
// after it is never released.
class StopStringMatcher {
 public:
  explicit StopStringMatcher(std::vector<std::string> stops);
  // Appends `text`; returns what is now safe to release. Sets *stopped when a stop string
  // matched (the stop string and everything after it are dropped; later calls return "").
  std::string feed(std::string_view text, bool* stopped);
  // The same, appending what is released to *out (without stop strings nothing is held back and
  // text goes straight through).
  void feed_to(std::string_view text, std::string* out, bool* stopped);
  // End of stream without a match: releases everything held back.
  std::string finish();
  const std::string& held() const { return held_; }

 private:
  std::vector<std::string> stops_;
  std::string held_;
  bool stopped_ = false;
};

struct Sequence {
  Sequence(uint64_t id, uint64_t arrival, GenerationRequest request, const tokenizer::Tokenizer& tok);

  const uint64_t id;
  // Admission order; "newest" for preemption means the largest arrival.
  const uint64_t arrival;
  // The request as submitted, prompt moved into `tokens`.
  GenerationRequest request;

  // Prompt followed by generated tokens.
  std::vector<int32_t> tokens;
  const int32_t num_prompt_tokens;
  // Tokens whose KV is in the cache (written by a past step or shared from the prefix cache).
  // Reset to 0 on preemption: the sequence re-prefills prompt + generated tokens later.
  int32_t num_computed = 0;
  // KV block ids; block i holds positions [i * block_size, (i + 1) * block_size). Only ever
  // appended to, or cleared (BlockManager::free), which bumps table_epoch: the same (id, epoch)
  // means the table has only grown (a backend may upload just the new ids).
  std::vector<int32_t> block_table;
  uint32_t table_epoch = 0;
  // Hash-chain keys of the leading full blocks the block manager has already offered to the
  // prefix cache (owned by BlockManager; cleared when the blocks are freed).
  std::vector<uint64_t> block_hashes;

  SeqStatus status = SeqStatus::kWaiting;
  FinishReason finish_reason = FinishReason::kNone;
  int32_t num_preemptions = 0;
  // Async scheduling: the step in flight samples this sequence's last token (max_tokens or
  // max_model_len), so it finishes when that step is collected; the scheduler leaves it alone.
  bool final_token_pending = false;
  // The Scheduler::schedule() call that last scheduled this sequence (its round counter), so
  // the preemption search can skip sequences already in the step without a set of them.
  uint64_t scheduled_round = 0;

  tokenizer::IncrementalDetokenizer detok;
  StopStringMatcher stop_matcher;

  // Output of the current step, handed to the caller and cleared by the engine.
  TokenIds out_tokens;
  std::string out_text;
  std::vector<float> out_logits;

  int32_t num_tokens() const { return static_cast<int32_t>(tokens.size()); }
  int32_t num_generated() const { return num_tokens() - num_prompt_tokens; }
  int32_t num_uncomputed() const { return num_tokens() - num_computed; }
  bool finished() const { return status == SeqStatus::kFinished; }
};

}  // namespace mpserve::engine
