// The OpenAI wire format: request bodies -> native structs (validated), native results -> JSON.
// Runs on HTTP threads; nothing here touches the engine.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "engine/engine.h"
#include "tokenizer/tokenizer.h"

namespace mpserve::server {

// An HTTP error in OpenAI's shape: {"error":{"message","type","param","code"}}.
struct ApiError {
  int status = 400;
  std::string message;
  std::string type = "invalid_request_error";
  std::string param;  // the offending field; empty = null
  std::string code;   // machine-readable code; empty = null
};
std::string error_body(const ApiError& e);

enum class Endpoint { kCompletions, kChat };

// One request as the client sent it, type-checked and range-checked but not yet tokenized.
struct ParsedRequest {
  Endpoint endpoint = Endpoint::kCompletions;
  std::string model;  // empty when the client sent none
  // Completions: one entry per prompt (text or token ids). Chat: unused.
  std::vector<std::variant<std::string, std::vector<int32_t>>> prompts;
  std::vector<tokenizer::ChatMessage> messages;  // chat only
  std::optional<int32_t> max_tokens;              // absent = endpoint default
  float temperature = 1.0f;
  float top_p = 1.0f;
  int32_t top_k = 0;
  std::optional<uint64_t> seed;
  std::vector<std::string> stop;
  std::vector<int32_t> stop_token_ids;
  int32_t n = 1;
  bool stream = false;
  bool include_usage = false;
  bool ignore_eos = false;
  bool skip_special_tokens = true;
};

// Limits the parser enforces that depend on the served model.
struct ProtocolLimits {
  int32_t vocab_size = 0;
  int32_t max_model_len = 0;
  int32_t max_choices = 16;  // prompts x n
};

// Parses and validates a body. Never throws; every failure is a 4xx ApiError.
std::variant<ParsedRequest, ApiError> parse_request(Endpoint endpoint, std::string_view body,
                                                    const ProtocolLimits& limits);

// Tokenizes (through the chat template for chat) and builds one engine request per choice,
// in choice order (prompt-major, then n). Checks prompt length against max_model_len.
std::variant<std::vector<engine::GenerationRequest>, ApiError> build_generation_requests(
    const ParsedRequest& req, const tokenizer::Tokenizer& tok, const ProtocolLimits& limits, uint64_t default_seed);

// What one choice produced, accumulated from RequestOutputs.
struct ChoiceResult {
  std::string text;
  std::string finish_reason;  // "stop" | "length" | "abort"
  // note: choices of one prompt share it (n > 1) and OpenAI counts a shared prompt once, so
  // only the first choice of each prompt carries its prompt_tokens; the rest hold 0.
  int32_t prompt_tokens = 0;
  int32_t completion_tokens = 0;
};

struct Usage {
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
};

// Full (non-streaming) responses.
std::string completion_response(const std::string& id, int64_t created, const std::string& model,
                                 const std::vector<ChoiceResult>& choices);
std::string chat_response(const std::string& id, int64_t created, const std::string& model,
                          const std::vector<ChoiceResult>& choices);

// One SSE `data: {...}\n\n` event. finish_reason empty = null. For chat, `role_only` is the
// first chunk of a choice (delta {"role":"assistant","content":""}).
std::string completion_chunk(const std::string& id, int64_t created, const std::string& model, int index,
                             const std::string& text, const std::string& finish_reason);
std::string chat_chunk(const std::string& id, int64_t created, const std::string& model, int index,
                       const std::string& text, const std::string& finish_reason, bool role_only);
// The final usage chunk (stream_options.include_usage): empty choices, usage set.
std::string usage_chunk(Endpoint endpoint, const std::string& id, int64_t created, const std::string& model,
                        const Usage& usage);
// An error inside an already-started stream, then the stream ends.
std::string stream_error_event(const ApiError& e);
inline constexpr std::string_view kStreamDone = "data: [DONE]\n\n";

std::string models_response(const std::string& model, int64_t created, int32_t max_model_len);

}  // namespace mpserve::server
