// NFC through utf8proc, with a fast path for text that NFC cannot change.
#include "tokenizer/normalizer.h"

#include <cstdlib>

#include <utf8proc.h>

#include "common/check.h"
#include "tokenizer/utf8.h"

namespace mpserve::tokenizer {
namespace {

// note: no code point below U+0300 has NFC_Quick_Check No or Maybe, so a run of them is already
// NFC and cannot compose with what follows it; that covers ASCII and Latin-1 text cheaply.
bool below_combining_range(std::string_view s) {
  for (char ch : s) {
    const unsigned char c = static_cast<unsigned char>(ch);
    if (c >= 0xCC) return false;  // a lead byte of U+0300 or above
  }
  return true;
}

void append_nfc_valid(std::string* out, std::string_view valid) {
  if (valid.empty()) return;
  if (below_combining_range(valid)) {
    out->append(valid);
    return;
  }
  utf8proc_uint8_t* mapped = nullptr;
  const utf8proc_ssize_t n =
      utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(valid.data()), static_cast<utf8proc_ssize_t>(valid.size()),
                   &mapped, static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
  // The input was validated above, so utf8proc can only fail by running out of memory.
  MPS_CHECK_MSG(n >= 0, "utf8proc_map: {}", utf8proc_errmsg(n));
  out->append(reinterpret_cast<const char*>(mapped), static_cast<size_t>(n));
  std::free(mapped);
}

}  // namespace

std::string nfc(std::string_view text) {
  if (below_combining_range(text)) return std::string(text);
  std::string out;
  out.reserve(text.size());
  size_t start = 0, i = 0;
  while (i < text.size()) {
    size_t subpart;
    bool truncated;
    const size_t n = utf8_sequence_length(text, i, &subpart, &truncated);
    if (n > 0) {
      i += n;
      continue;
    }
    append_nfc_valid(&out, text.substr(start, i - start));
    out.append(text.substr(i, subpart));
    i += subpart;
    start = i;
  }
  append_nfc_valid(&out, text.substr(start));
  return out;
}

}  // namespace mpserve::tokenizer
