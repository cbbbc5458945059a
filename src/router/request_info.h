// What the router needs to know of an OpenAI request body to place it: the prompt's start (for prefix
// affinity), an estimate of its work (for least-tokens), and whether the reply streams.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "common/status.h"

namespace mpserve::router {

struct RequestInfo {
  std::string prompt_prefix;  // at most kAffinityPrefixBytes of the prompt (chat: messages joined)
  int64_t prompt_tokens_estimate = 0;
  int64_t max_tokens = 0;
  bool stream = false;
  int64_t work_tokens() const { return prompt_tokens_estimate + max_tokens; }
};

// note: the router has no tokenizer (engines may run any model), so a prompt's length is estimated at
// four bytes per token, the usual ratio for English BPE vocabularies.
inline constexpr int64_t kBytesPerTokenEstimate = 4;
// OpenAI's default max_tokens for /v1/completions when the request names none.
inline constexpr int64_t kDefaultMaxTokens = 16;

// Fails only on a body that is not a JSON object; missing fields get defaults (the engine validates).
Result<RequestInfo> parse_request_info(std::string_view body, bool chat);

}  // namespace mpserve::router
