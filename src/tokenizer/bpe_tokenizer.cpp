// Encode and decode for byte-level BPE tokenizers.
#include "tokenizer/bpe_tokenizer.h"

#include <deque>

#include "tokenizer/byte_level.h"
#include "tokenizer/normalizer.h"
#include "tokenizer/utf8.h"

namespace mpserve::tokenizer {

BpeTokenizer::BpeTokenizer(BpeModel model, PreTokenizer pre_tokenizer, bool nfc,
                           const std::vector<AddedToken>& added, TokenizerConfig config)
    : model_(std::move(model)),
      pre_tokenizer_(std::move(pre_tokenizer)),
      nfc_(nfc),
      added_matcher_(added),
      config_(std::move(config)) {
  size_t n = model_.tokens().size();
  for (const AddedToken& t : added) n = std::max(n, static_cast<size_t>(t.id) + 1);
  std::vector<std::string> bytes(n);
  std::vector<bool> special(n, false);
  for (size_t id = 0; id < model_.tokens().size(); ++id) bytes[id] = byte_level_to_bytes(model_.tokens()[id]);
  // note: added tokens are plain text, not byte-level strings, so their bytes are their content
  // (this also overrides a vocabulary entry with the same id, as HF's added vocabulary does).
  for (const AddedToken& t : added) {
    bytes[t.id] = t.content;
    special[t.id] = t.special;
    added_ids_.emplace(t.content, t.id);
  }
  // One packed table (token_piece_table.h): the detokenizer reads a random token per sequence and
  // step, and at batch 256 a string object per id (then its heap bytes) was two cache misses per token.
  pieces_ = TokenPieceTable(bytes, special);
}

std::vector<int32_t> BpeTokenizer::encode(std::string_view text) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 1);
  std::vector<AddedTokenMatcher::Segment> segments;
  added_matcher_.split(text, &segments);
  std::vector<std::string_view> words;
  std::deque<std::string> storage;
  std::string normalized;
  for (const auto& seg : segments) {
    if (seg.id >= 0) {
      ids.push_back(seg.id);
      continue;
    }
    std::string_view plain = seg.text;
    if (nfc_) {
      normalized = nfc(plain);
      plain = normalized;
    }
    words.clear();
    storage.clear();
    pre_tokenizer_.split(plain, &words, &storage);
    for (std::string_view w : words) model_.encode_word(w, &ids);
  }
  return ids;
}

std::string BpeTokenizer::decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
  std::string raw;
  for (int32_t id : ids) {
    // Unknown ids are skipped, as HF's decode skips ids it has no token for.
    if (id < 0 || id >= vocab_size()) continue;
    const TokenPieceTable::Piece p = pieces_.get(id);
    if (skip_special_tokens && p.special) continue;
    raw += p.bytes;
  }
  return utf8_is_valid(raw) ? raw : utf8_lossy(raw);
}

std::string_view BpeTokenizer::token_bytes(int32_t id) const { return pieces_.get(id).bytes; }

std::optional<int32_t> BpeTokenizer::token_to_id(std::string_view token) const {
  if (const auto it = added_ids_.find(std::string(token)); it != added_ids_.end()) return it->second;
  if (const auto it = model_.vocab().find(std::string(token)); it != model_.vocab().end()) return it->second;
  return std::nullopt;
}

bool BpeTokenizer::is_special(int32_t id) const { return pieces_.get(id).special; }

}  // namespace mpserve::tokenizer
