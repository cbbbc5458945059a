#include "tokenizer/token_piece_table.h"

#include <mutex>

#include "common/check.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace mpserve::tokenizer {

TokenPieceTable::TokenPieceTable(const std::vector<std::string>& bytes, const std::vector<bool>& special) {
  entries_.resize(bytes.size());
  for (size_t id = 0; id < bytes.size(); ++id) {
    set(static_cast<int32_t>(id), bytes[id], id < special.size() && special[id]);
  }
}

TokenPieceTable::TokenPieceTable(const Tokenizer& tok) {
  const int32_t n = tok.vocab_size();
  MPS_CHECK_MSG(n >= 0, "vocab_size {}", n);
  entries_.resize(static_cast<size_t>(n));
  for (int32_t id = 0; id < n; ++id) set(id, tok.token_bytes(id), tok.is_special(id));
}

void TokenPieceTable::set(int32_t id, std::string_view b, bool special) {
  Entry& e = entries_[static_cast<size_t>(id)];
  e.flags = static_cast<uint8_t>((special ? kSpecial : 0) | (utf8_is_valid(b) ? kComplete : 0));
  if (b.size() <= kInline) {
    e.len = static_cast<uint8_t>(b.size());
    std::memcpy(e.bytes, b.data(), b.size());
  } else {
    MPS_CHECK_MSG(long_bytes_.size() + b.size() <= UINT32_MAX, "token bytes exceed 4 GiB");
    const uint32_t where[2] = {static_cast<uint32_t>(long_bytes_.size()), static_cast<uint32_t>(b.size())};
    e.flags |= kLong;
    std::memcpy(e.bytes, where, sizeof where);
    long_bytes_.append(b);
  }
}

// note: out of line, where TokenPieceTable is complete (the header only declares it).
Tokenizer::Tokenizer() = default;
Tokenizer::~Tokenizer() = default;

const TokenPieceTable& Tokenizer::piece_table() const {
  std::call_once(piece_table_once_, [this] { piece_table_ = std::make_unique<const TokenPieceTable>(*this); });
  return *piece_table_;
}

}  // namespace mpserve::tokenizer
