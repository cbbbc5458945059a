// UTF-8 validation and lossy repair shared by decode, the detokenizer and the normalizer.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace mpserve::tokenizer {

inline constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";  // U+FFFD

// Length of the well-formed UTF-8 sequence starting at s[i] (1..4), or 0 when s[i..] starts
// with an ill-formed sequence. *subpart receives the length of the "maximal subpart" to replace
// with one U+FFFD (Unicode 15, 3.9 U+FFFD substitution; what Rust's from_utf8_lossy and
// Python's errors="replace" do), and *truncated is set when the bytes so far are a valid
// prefix cut off by the end of s.
size_t utf8_sequence_length(std::string_view s, size_t i, size_t* subpart, bool* truncated);

// True when s is entirely well-formed UTF-8 (no surrogates, overlongs or values > U+10FFFF).
bool utf8_is_valid(std::string_view s);

// s with every maximal ill-formed subpart replaced by U+FFFD.
std::string utf8_lossy(std::string_view s);

}  // namespace mpserve::tokenizer
