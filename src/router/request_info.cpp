#include "router/request_info.h"

#include <nlohmann/json.hpp>

#include "router/policy.h"

namespace mpserve::router {
namespace {

// Text of a chat message's content: a string, or an array of {type:"text", text} parts.
std::string content_text(const nlohmann::json& content) {
  if (content.is_string()) return content.get<std::string>();
  std::string out;
  if (content.is_array()) {
    for (const auto& part : content) {
      if (part.is_object() && part.contains("text") && part["text"].is_string()) out += part["text"].get<std::string>();
    }
  }
  return out;
}

}  // namespace

Result<RequestInfo> parse_request_info(std::string_view body, bool chat) {
  nlohmann::json j = nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return Status::error("request body is not a JSON object");
  RequestInfo info;
  std::string prompt;
  int64_t prompt_bytes = 0;
  if (chat) {
    if (j.contains("messages") && j["messages"].is_array()) {
      for (const auto& m : j["messages"]) {
        if (!m.is_object()) continue;
        std::string role = m.value("role", "");
        std::string text = m.contains("content") ? content_text(m["content"]) : "";
        prompt_bytes += static_cast<int64_t>(role.size() + text.size()) + 4;  // + template tokens per message
        if (prompt.size() < kAffinityPrefixBytes) prompt += role + ":" + text + "\n";
      }
    }
  } else if (j.contains("prompt")) {
    const auto& p = j["prompt"];
    if (p.is_string()) {
      prompt = p.get<std::string>();
      prompt_bytes = static_cast<int64_t>(prompt.size());
    } else if (p.is_array()) {
      for (const auto& item : p) {
        if (item.is_string()) {
          if (prompt.empty()) prompt = item.get<std::string>();
          prompt_bytes += static_cast<int64_t>(item.get_ref<const std::string&>().size());
        } else if (item.is_number_integer()) {
          prompt_bytes += kBytesPerTokenEstimate;  // a token-id prompt: one token per id
          if (prompt.size() < kAffinityPrefixBytes) prompt += std::to_string(item.get<int64_t>()) + ",";
        }
      }
    }
  }
  info.prompt_prefix = prompt.substr(0, kAffinityPrefixBytes);
  info.prompt_tokens_estimate = (prompt_bytes + kBytesPerTokenEstimate - 1) / kBytesPerTokenEstimate;
  info.max_tokens = kDefaultMaxTokens;
  for (const char* key : {"max_tokens", "max_completion_tokens"}) {
    if (j.contains(key) && j[key].is_number_integer()) info.max_tokens = std::max<int64_t>(0, j[key].get<int64_t>());
  }
  info.stream = j.value("stream", false) == true;
  return info;
}

}  // namespace mpserve::router
