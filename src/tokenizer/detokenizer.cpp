// IncrementalDetokenizer: emits only complete UTF-8 characters while streaming.
//
// The output is exactly what decode() of all ids pushed so far returns, cut at character
// boundaries: ill-formed bytes become U+FFFD by the same maximal-subpart rule (utf8.h), and
// only a trailing sequence that could still become valid is held back.
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace mpserve::tokenizer {
namespace {

// Moves the decided prefix of *pending into *out; at end of stream nothing is held back.
void drain(std::string* pending, std::string* out, bool end_of_stream) {
  const std::string& s = *pending;
  size_t i = 0;
  while (i < s.size()) {
    size_t subpart;
    bool truncated;
    const size_t n = utf8_sequence_length(s, i, &subpart, &truncated);
    if (n > 0) {
      out->append(s, i, n);
      i += n;
      continue;
    }
    if (truncated && !end_of_stream) break;  // may still complete with the next token's bytes
    out->append(kReplacementChar);
    i += subpart;
  }
  pending->erase(0, i);
}

}  // namespace

IncrementalDetokenizer::IncrementalDetokenizer(const Tokenizer& tok, bool skip_special_tokens)
    : tok_(tok), skip_special_(skip_special_tokens) {}

std::string IncrementalDetokenizer::push(int32_t id) {
  if (skip_special_ && tok_.is_special(id)) return {};
  pending_ += tok_.token_bytes(id);
  std::string out;
  drain(&pending_, &out, /*end_of_stream=*/false);
  return out;
}

std::string IncrementalDetokenizer::flush() {
  std::string out;
  drain(&pending_, &out, /*end_of_stream=*/true);
  return out;
}

}  // namespace mpserve::tokenizer
