// Fuzz-style checks without libFuzzer: random byte strings and random Unicode never crash
// encode(), and every input byte comes back out of the tokens.
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "tokenizer/normalizer.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"
#include "tokenizer_test_util.h"

namespace mpserve::tokenizer {
namespace {

void append_utf8(std::string* out, char32_t cp) {
  if (cp < 0x80) {
    *out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    *out += static_cast<char>(0xC0 | (cp >> 6));
    *out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    *out += static_cast<char>(0xE0 | (cp >> 12));
    *out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    *out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    *out += static_cast<char>(0xF0 | (cp >> 18));
    *out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    *out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    *out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// Random text: raw bytes, or code points drawn from ASCII, Latin/Greek/Cyrillic with combining
// marks, CJK/Hangul, emoji and the whole range (surrogates excluded).
std::string random_text(std::mt19937& rng, bool raw_bytes) {
  std::string s;
  const size_t n = rng() % 48;
  for (size_t i = 0; i < n; ++i) {
    if (raw_bytes) {
      s += static_cast<char>(rng() & 0xFF);
      continue;
    }
    char32_t cp;
    switch (rng() % 6) {
      case 0: cp = rng() % 0x80; break;
      case 1: cp = 0x20 + rng() % 0x5F; break;
      case 2: cp = 0xC0 + rng() % 0x4C0; break;  // Latin-1 .. Cyrillic, combining marks included
      case 3: cp = rng() % 2 ? 0x4E00 + rng() % 0x5200 : 0xAC00 + rng() % 0x2BA4; break;
      case 4: cp = 0x1F300 + rng() % 0x700; break;
      default: cp = rng() % 0x110000; break;
    }
    if (cp >= 0xD800 && cp <= 0xDFFF) cp = 'x';
    append_utf8(&s, cp);
  }
  return s;
}

void check_round_trip(const Tokenizer& tok, const std::string& s) {
  const std::vector<int32_t> ids = tok.encode(s);
  std::string joined;
  for (int32_t id : ids) {
    ASSERT_GE(id, 0);
    ASSERT_LT(id, tok.vocab_size());
    joined += tok.token_bytes(id);
  }
  // Ill-formed bytes are kept, so the tokens always spell the normalized input exactly.
  ASSERT_EQ(joined, nfc(s));
  const std::string text = tok.decode(ids);
  ASSERT_TRUE(utf8_is_valid(text));
  if (utf8_is_valid(s) && nfc(s) == s) {
    ASSERT_EQ(text, s);
  }
}

TEST(TokenizerFuzz, random_bytes_encode_and_round_trip) {
  const Tokenizer* tok = testing::qwen();
  ASSERT_NE(tok, nullptr);
  std::mt19937 rng(2024);
  for (int iter = 0; iter < 3000; ++iter) {
    const std::string s = random_text(rng, /*raw_bytes=*/iter % 3 == 0);
    ASSERT_NO_FATAL_FAILURE(check_round_trip(*tok, s)) << "iteration " << iter;
  }
}

TEST(TokenizerFuzz, long_runs_do_not_overflow_or_stall) {
  const Tokenizer* tok = testing::qwen();
  ASSERT_NE(tok, nullptr);
  for (const std::string unit : {" ", "\n", "a", "1", "!", "é", "中", "😀", "\xFF", " \t", "'s"}) {
    std::string s;
    while (s.size() < 200000) s += unit;
    ASSERT_NO_FATAL_FAILURE(check_round_trip(*tok, s)) << "unit " << unit;
  }
}

}  // namespace
}  // namespace mpserve::tokenizer
