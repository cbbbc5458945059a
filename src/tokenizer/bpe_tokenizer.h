// The Tokenizer implementation: added tokens, NFC, pre-tokenizer and byte-level BPE in a row.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "tokenizer/added_tokens.h"
#include "tokenizer/bpe_model.h"
#include "tokenizer/pre_tokenizer.h"
#include "tokenizer/token_piece_table.h"
#include "tokenizer/tokenizer.h"

namespace mpserve::tokenizer {

// What tokenizer_config.json contributes.
struct TokenizerConfig {
  std::optional<int32_t> eos_id;
  std::optional<int32_t> bos_id;
  std::string chat_template_kind = "chatml";
};

class BpeTokenizer final : public Tokenizer {
 public:
  BpeTokenizer(BpeModel model, PreTokenizer pre_tokenizer, bool nfc, const std::vector<AddedToken>& added,
               TokenizerConfig config);

  std::vector<int32_t> encode(std::string_view text) const override;
  std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const override;
  std::string_view token_bytes(int32_t id) const override;
  int32_t vocab_size() const override { return pieces_.size(); }
  std::optional<int32_t> token_to_id(std::string_view token) const override;
  bool is_special(int32_t id) const override;
  std::optional<int32_t> eos_token_id() const override { return config_.eos_id; }
  std::optional<int32_t> bos_token_id() const override { return config_.bos_id; }
  std::string chat_template_kind() const override { return config_.chat_template_kind; }
  const TokenPieceTable& piece_table() const override { return pieces_; }

  // The config refers to tokens by name, so it is resolved after construction.
  void set_config(TokenizerConfig config) { config_ = std::move(config); }

 private:
  BpeModel model_;
  PreTokenizer pre_tokenizer_;
  bool nfc_;
  AddedTokenMatcher added_matcher_;
  std::unordered_map<std::string, int32_t> added_ids_;  // added token content -> id
  // id -> raw bytes (added tokens: their content) and whether it is an added token with
  // special = true: the one copy decode(), token_bytes() and the streaming decoder all read.
  TokenPieceTable pieces_;
  TokenizerConfig config_;
};

}  // namespace mpserve::tokenizer
