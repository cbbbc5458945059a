// UTF-8 well-formedness (Unicode Table 3-7) and U+FFFD substitution of maximal subparts.
#include "tokenizer/utf8.h"

namespace mpserve::tokenizer {

size_t utf8_sequence_length(std::string_view s, size_t i, size_t* subpart, bool* truncated) {
  *truncated = false;
  const auto byte = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = byte(i);
  if (c < 0x80) {
    *subpart = 1;
    return 1;
  }
  size_t len;
  // Range allowed for the second byte; later bytes are always 80..BF (Table 3-7).
  unsigned char lo = 0x80, hi = 0xBF;
  if (c >= 0xC2 && c <= 0xDF) {
    len = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    len = 3;
    if (c == 0xE0) lo = 0xA0;  // no overlongs
    if (c == 0xED) hi = 0x9F;  // no surrogates
  } else if (c >= 0xF0 && c <= 0xF4) {
    len = 4;
    if (c == 0xF0) lo = 0x90;  // no overlongs
    if (c == 0xF4) hi = 0x8F;  // nothing above U+10FFFF
  } else {
    *subpart = 1;  // C0, C1, F5..FF and stray continuation bytes
    return 0;
  }
  size_t k = 1;
  for (; k < len; ++k) {
    if (i + k >= s.size()) {
      *subpart = k;
      *truncated = true;
      return 0;
    }
    const unsigned char b = byte(i + k);
    const bool ok = k == 1 ? (b >= lo && b <= hi) : (b >= 0x80 && b <= 0xBF);
    if (!ok) {
      *subpart = k;
      return 0;
    }
  }
  *subpart = len;
  return len;
}

bool utf8_is_valid(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    if (static_cast<unsigned char>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    size_t subpart;
    bool truncated;
    const size_t n = utf8_sequence_length(s, i, &subpart, &truncated);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

std::string utf8_lossy(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    size_t subpart;
    bool truncated;
    const size_t n = utf8_sequence_length(s, i, &subpart, &truncated);
    if (n > 0) {
      out.append(s.substr(i, n));
      i += n;
    } else {
      out.append(kReplacementChar);
      i += subpart;
    }
  }
  return out;
}

}  // namespace mpserve::tokenizer
