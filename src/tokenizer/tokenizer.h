// Hugging Face tokenizer.json byte-level BPE (Qwen2/2.5/3, Llama 3).
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace mpserve::tokenizer {

class TokenPieceTable;

class Tokenizer {
 public:
  Tokenizer();
  virtual ~Tokenizer();

  // Loads DIR/tokenizer.json (and DIR/tokenizer_config.json for chat template and special tokens).
  static Result<std::unique_ptr<Tokenizer>> load(const std::filesystem::path& dir);
  static Result<std::unique_ptr<Tokenizer>> from_json(std::string_view tokenizer_json,
                                                      std::string_view tokenizer_config_json,
                                                      const std::string& source);

  // Encodes text. Added/special tokens that appear literally in the text are matched as such
  // (as HF does by default). No BOS or other template tokens are added.
  virtual std::vector<int32_t> encode(std::string_view text) const = 0;
  // Decodes ids to text; invalid UTF-8 from partial byte sequences becomes U+FFFD.
  virtual std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens = false) const = 0;
  // Raw bytes of one token (byte-level mapping undone); empty for unknown ids. The view stays
  // valid as long as the tokenizer (the streaming decoder reads it once per generated token).
  virtual std::string_view token_bytes(int32_t id) const = 0;

  virtual int32_t vocab_size() const = 0;  // highest id + 1, added tokens included
  virtual std::optional<int32_t> token_to_id(std::string_view token) const = 0;
  virtual bool is_special(int32_t id) const = 0;
  // From tokenizer_config.json: eos_token / bos_token / pad_token, when present.
  virtual std::optional<int32_t> eos_token_id() const = 0;
  virtual std::optional<int32_t> bos_token_id() const = 0;
  // Which chat template the model uses: "chatml" or "llama3" (from tokenizer_config.json).
  virtual std::string chat_template_kind() const = 0;

  // Every id's bytes packed for the streaming decoder (token_piece_table.h). By default built from
  // the accessors above on first use (thread-safe); the tokenizer that load() and from_json()
  // return keeps its bytes in one, built with it.
  virtual const TokenPieceTable& piece_table() const;

 private:
  mutable std::once_flag piece_table_once_;
  mutable std::unique_ptr<const TokenPieceTable> piece_table_;
};

// Streaming decode: push ids one at a time, receive text that is always complete UTF-8.
// Bytes of a character split across tokens are held back until the character completes.
class IncrementalDetokenizer {
 public:
  IncrementalDetokenizer(const Tokenizer& tok, bool skip_special_tokens);
  // Returns the newly completed text (possibly empty).
  std::string push(int32_t id);
  // The same, appended to *out (the engine's per-token path: no string per token).
  void push_to(int32_t id, std::string* out);
  // Returns whatever is held back, invalid bytes as U+FFFD (end of stream).
  std::string flush();

 private:
  const TokenPieceTable& pieces_;
  bool skip_special_;
  std::string pending_;
};

struct ChatMessage {
  std::string role;  // system | user | assistant | tool
  std::string content;
};

// Renders messages with the model's chat template kind ("chatml" or "llama3").
// add_generation_prompt appends the assistant header. Returns an error for unknown roles/kinds.
Result<std::string> apply_chat_template(const std::string& kind, const std::vector<ChatMessage>& messages,
                                        bool add_generation_prompt);

}  // namespace mpserve::tokenizer
