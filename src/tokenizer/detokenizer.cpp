// IncrementalDetokenizer: emits only complete UTF-8 characters while streaming.
#include <cstddef>

#include "tokenizer/tokenizer.h"

namespace mpserve::tokenizer {
namespace {

// Length of the longest prefix of s made of complete, valid UTF-8 sequences, treating a
// trailing incomplete (but so far valid) sequence as not yet complete. Invalid bytes are
// reported through *invalid_at (index of the first invalid byte) so the caller can replace them.
size_t complete_prefix(const std::string& s, size_t* invalid_at) {
  *invalid_at = std::string::npos;
  size_t i = 0;
  while (i < s.size()) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
    if (len == 0) {
      *invalid_at = i;
      return i;
    }
    if (i + len > s.size()) {
      for (size_t j = i + 1; j < s.size(); ++j) {
        if ((static_cast<unsigned char>(s[j]) & 0xc0) != 0x80) {
          *invalid_at = i;
          return i;
        }
      }
      return i;  // incomplete tail: wait for more bytes
    }
    for (size_t j = 1; j < len; ++j) {
      if ((static_cast<unsigned char>(s[i + j]) & 0xc0) != 0x80) {
        *invalid_at = i;
        return i;
      }
    }
    i += len;
  }
  return i;
}

constexpr const char* kReplacement = "\xEF\xBF\xBD";

}  // namespace

IncrementalDetokenizer::IncrementalDetokenizer(const Tokenizer& tok, bool skip_special_tokens)
    : tok_(tok), skip_special_(skip_special_tokens) {}

std::string IncrementalDetokenizer::push(int32_t id) {
  if (skip_special_ && tok_.is_special(id)) return {};
  pending_ += tok_.token_bytes(id);
  std::string out;
  for (;;) {
    size_t invalid_at;
    size_t n = complete_prefix(pending_, &invalid_at);
    out.append(pending_, 0, n);
    if (invalid_at == std::string::npos) {
      pending_.erase(0, n);
      return out;
    }
    // A byte that can never become valid: replace it, as a full decode would, and go on.
    out += kReplacement;
    pending_.erase(0, invalid_at + 1);
  }
}

std::string IncrementalDetokenizer::flush() {
  std::string out;
  size_t invalid_at;
  size_t n = complete_prefix(pending_, &invalid_at);
  out.append(pending_, 0, n);
  if (n < pending_.size()) out += kReplacement;
  pending_.clear();
  return out;
}

}  // namespace mpserve::tokenizer
