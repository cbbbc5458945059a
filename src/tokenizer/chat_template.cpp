// apply_chat_template: the two chat formats mpserve's models use, written out by hand rather
// than through a Jinja interpreter.
//
// chatml (Qwen2/2.5/3): "<|im_start|>{role}\n{content}<|im_end|>\n" per message; tool results
// are wrapped as Qwen's templates do (consecutive tool messages share one user turn, each
// inside <tool_response>). note: no default system message is added. Qwen2.5-Instruct's own
// template inserts "You are Qwen, created by Alibaba Cloud. You are a helpful assistant." when
// the first message is not a system message, but Qwen3's (the tokenizer_config.json that
// make-model writes) and plain ChatML do not, and the kind alone cannot tell Qwen2.5 apart; a
// caller serving Qwen2.5 that wants it passes that system message explicitly. Qwen3's
// reasoning-content handling (<think> blocks in history) is not reproduced.
//
// llama3: "<|begin_of_text|>" then "<|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>"
// per message, content stripped of surrounding whitespace as Llama 3's template (`| trim`) does;
// the tool role is written "ipython", as Llama 3.1's template names tool output.
#include <string_view>

#include "tokenizer/tokenizer.h"

namespace mpserve::tokenizer {
namespace {

bool known_role(const std::string& role) {
  return role == "system" || role == "user" || role == "assistant" || role == "tool";
}

std::string_view trim(std::string_view s) {
  constexpr std::string_view kSpace = " \t\n\r\f\v";
  const size_t b = s.find_first_not_of(kSpace);
  if (b == std::string_view::npos) return {};
  return s.substr(b, s.find_last_not_of(kSpace) - b + 1);
}

std::string render_chatml(const std::vector<ChatMessage>& messages, bool add_generation_prompt) {
  std::string out;
  for (size_t i = 0; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    if (m.role == "tool") {
      if (i == 0 || messages[i - 1].role != "tool") out += "<|im_start|>user";
      out += "\n<tool_response>\n";
      out += m.content;
      out += "\n</tool_response>";
      if (i + 1 == messages.size() || messages[i + 1].role != "tool") out += "<|im_end|>\n";
      continue;
    }
    out += "<|im_start|>";
    out += m.role;
    out += '\n';
    out += m.content;
    out += "<|im_end|>\n";
  }
  if (add_generation_prompt) out += "<|im_start|>assistant\n";
  return out;
}

std::string render_llama3(const std::vector<ChatMessage>& messages, bool add_generation_prompt) {
  std::string out = "<|begin_of_text|>";
  for (const ChatMessage& m : messages) {
    out += "<|start_header_id|>";
    out += m.role == "tool" ? "ipython" : m.role;
    out += "<|end_header_id|>\n\n";
    out += trim(m.content);
    out += "<|eot_id|>";
  }
  if (add_generation_prompt) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
  return out;
}

}  // namespace

Result<std::string> apply_chat_template(const std::string& kind, const std::vector<ChatMessage>& messages,
                                        bool add_generation_prompt) {
  for (size_t i = 0; i < messages.size(); ++i) {
    if (!known_role(messages[i].role)) {
      return Status::errorf("messages[{}]: unknown role \"{}\" (expected system, user, assistant or tool)", i,
                            messages[i].role);
    }
  }
  if (kind == "chatml") return render_chatml(messages, add_generation_prompt);
  if (kind == "llama3") return render_llama3(messages, add_generation_prompt);
  return Status::errorf("unknown chat template kind \"{}\" (expected chatml or llama3)", kind);
}

}  // namespace mpserve::tokenizer
