// IncrementalDetokenizer: emits only complete UTF-8 characters while streaming.
//
// The output is exactly what decode() of all ids pushed so far returns, cut at character
// boundaries: ill-formed bytes become U+FFFD by the same maximal-subpart rule (utf8.h), and
// only a trailing sequence that could still become valid is held back.
#include "tokenizer/token_piece_table.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace mpserve::tokenizer {
namespace {

// Appends the decided prefix of s to *out (ill-formed bytes as U+FFFD) and returns its length in
// s; at end of stream all of s is decided. Runs of complete characters are appended at once.
size_t drain(std::string_view s, std::string* out, bool end_of_stream) {
  size_t i = 0, run = 0;  // [run, i): complete characters not yet appended
  while (i < s.size()) {
    if (static_cast<unsigned char>(s[i]) < 0x80) {  // ASCII: the common case
      ++i;
      continue;
    }
    size_t subpart;
    bool truncated;
    const size_t n = utf8_sequence_length(s, i, &subpart, &truncated);
    if (n > 0) {
      i += n;
      continue;
    }
    out->append(s.substr(run, i - run));
    if (truncated && !end_of_stream) return i;  // may still complete with the next token's bytes
    out->append(kReplacementChar);
    i += subpart;
    run = i;
  }
  out->append(s.substr(run, i - run));
  return i;
}

}  // namespace

IncrementalDetokenizer::IncrementalDetokenizer(const Tokenizer& tok, bool skip_special_tokens)
    : pieces_(tok.piece_table()), skip_special_(skip_special_tokens) {}

std::string IncrementalDetokenizer::push(int32_t id) {
  std::string out;
  push_to(id, &out);
  return out;
}

void IncrementalDetokenizer::push_to(int32_t id, std::string* out) {
  const TokenPieceTable::Piece p = pieces_.get(id);
  if (skip_special_ && p.special) return;
  if (pending_.empty()) {  // nothing held back: decode the token's bytes in place
    if (p.complete) {
      out->append(p.bytes);
      return;
    }
    pending_.assign(p.bytes.substr(drain(p.bytes, out, /*end_of_stream=*/false)));
    return;
  }
  pending_ += p.bytes;
  pending_.erase(0, drain(pending_, out, /*end_of_stream=*/false));
}

std::string IncrementalDetokenizer::flush() {
  std::string out;
  drain(pending_, &out, /*end_of_stream=*/true);
  pending_.clear();
  return out;
}

}  // namespace mpserve::tokenizer
