// IncrementalDetokenizer: streamed pieces are always complete UTF-8 and add up to decode().
#include <algorithm>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "tokenizer/byte_level.h"
#include "tokenizer/token_piece_table.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"
#include "tokenizer_test_util.h"

namespace mpserve::tokenizer {
namespace {

using testing::qwen;

int32_t byte_id(const Tokenizer& tok, uint8_t b) { return *tok.token_to_id(byte_to_utf8(b)); }

// Pushes every id, checks each piece is valid UTF-8, and returns the whole stream.
std::string stream(const Tokenizer& tok, const std::vector<int32_t>& ids, bool skip_special) {
  IncrementalDetokenizer detok(tok, skip_special);
  std::string all;
  for (int32_t id : ids) {
    const std::string piece = detok.push(id);
    EXPECT_TRUE(utf8_is_valid(piece)) << "broken UTF-8 emitted after id " << id;
    all += piece;
  }
  const std::string tail = detok.flush();
  EXPECT_TRUE(utf8_is_valid(tail));
  return all + tail;
}

TEST(TokenizerDetokenizer, holds_back_an_emoji_split_across_tokens) {
  const Tokenizer* tok = qwen();
  ASSERT_NE(tok, nullptr);
  IncrementalDetokenizer detok(*tok, false);
  EXPECT_EQ(detok.push(*tok->token_to_id("Hi")), "Hi");
  EXPECT_EQ(detok.push(byte_id(*tok, 0xF0)), "");
  EXPECT_EQ(detok.push(byte_id(*tok, 0x9F)), "");
  EXPECT_EQ(detok.push(byte_id(*tok, 0x98)), "");
  EXPECT_EQ(detok.push(byte_id(*tok, 0x80)), "\xF0\x9F\x98\x80");
  EXPECT_EQ(detok.flush(), "");
}

TEST(TokenizerDetokenizer, flush_replaces_an_unfinished_character) {
  const Tokenizer* tok = qwen();
  ASSERT_NE(tok, nullptr);
  IncrementalDetokenizer detok(*tok, false);
  EXPECT_EQ(detok.push(byte_id(*tok, 0xE4)), "");
  EXPECT_EQ(detok.push(byte_id(*tok, 0xBD)), "");
  EXPECT_EQ(detok.flush(), kReplacementChar);
  // An impossible continuation is replaced at once, like decode() does.
  EXPECT_EQ(detok.push(byte_id(*tok, 0xE4)), "");
  EXPECT_EQ(detok.push(*tok->token_to_id("A")), std::string(kReplacementChar) + "A");
}

TEST(TokenizerDetokenizer, never_passes_overlongs_surrogates_or_out_of_range_bytes) {
  const Tokenizer* tok = qwen();
  ASSERT_NE(tok, nullptr);
  for (const std::string bad : {"\xC0\x80", "\xED\xA0\x80", "\xF5\x80\x80\x80", "\xF4\x90\x80\x80", "\xE0\x80\x80"}) {
    std::vector<int32_t> ids;
    for (char c : bad) ids.push_back(byte_id(*tok, static_cast<uint8_t>(c)));
    EXPECT_EQ(stream(*tok, ids, false), tok->decode(ids));
  }
}

TEST(TokenizerDetokenizer, valid_text_streams_back_to_itself) {
  const Tokenizer* tok = qwen();
  ASSERT_NE(tok, nullptr);
  for (const std::string text :
       {"Hello, world!", "你好，世界！今天天气很好。", "👨‍👩‍👧‍👦 family, 👩🏽‍💻 coder 🇺🇸🇯🇵", "नमस्ते दुनिया", "😀😃😄😁 ☃ ★"}) {
    EXPECT_EQ(stream(*tok, tok->encode(text), false), text);
  }
}

TEST(TokenizerDetokenizer, random_id_streams_match_full_decode) {
  const Tokenizer* tok = qwen();
  ASSERT_NE(tok, nullptr);
  std::mt19937 rng(99);
  for (int iter = 0; iter < 300; ++iter) {
    std::vector<int32_t> ids(rng() % 40);
    for (int32_t& id : ids) {
      // Mostly single bytes (to split characters), sometimes any token, specials included.
      id = rng() % 3 ? byte_id(*tok, static_cast<uint8_t>(rng() & 0xFF)) : static_cast<int32_t>(rng() % 151669);
    }
    const bool skip = iter % 2 == 0;
    ASSERT_EQ(stream(*tok, ids, skip), tok->decode(ids, skip)) << "iteration " << iter;
  }
}

// The packed table holds each id's bytes (inline up to 14, else out of line), whether it is
// special, and whether its bytes are whole UTF-8. Checked against what is known independently of it:
// the 256 single-byte tokens of the byte-level alphabet, the chat specials, text made of long tokens,
// and UTF-8 validity; and the generic construction from any tokenizer's accessors agrees with it.
TEST(TokenizerDetokenizer, piece_table_holds_every_ids_bytes_and_flags) {
  const Tokenizer* tok = qwen();
  ASSERT_NE(tok, nullptr);
  const TokenPieceTable& table = tok->piece_table();
  ASSERT_EQ(table.size(), tok->vocab_size());
  for (int b = 0; b < 256; ++b) {
    const TokenPieceTable::Piece p = table.get(byte_id(*tok, static_cast<uint8_t>(b)));
    ASSERT_EQ(p.bytes, std::string(1, static_cast<char>(b))) << "byte " << b;
    EXPECT_FALSE(p.special);
    EXPECT_EQ(p.complete, b < 0x80) << "byte " << b;
  }
  for (const char* s : {"<|im_start|>", "<|im_end|>", "<|endoftext|>"}) {
    const TokenPieceTable::Piece p = table.get(*tok->token_to_id(s));
    EXPECT_EQ(p.bytes, s);
    EXPECT_TRUE(p.special) << s;
  }
  const std::string text = "x" + std::string(40, ' ') + "y = \"" + std::string(24, '=') + "\"\n" + std::string(32, '-');
  std::string joined;
  size_t longest = 0;
  for (int32_t id : tok->encode(text)) {
    joined += table.get(id).bytes;
    longest = std::max(longest, table.get(id).bytes.size());
  }
  EXPECT_EQ(joined, text);
  EXPECT_GT(longest, 14u);  // the out-of-line case ran
  const TokenPieceTable generic(*tok);
  ASSERT_EQ(generic.size(), table.size());
  int partial = 0;
  for (int32_t id = 0; id < tok->vocab_size(); ++id) {
    const TokenPieceTable::Piece p = table.get(id), g = generic.get(id);
    ASSERT_TRUE(p.bytes == g.bytes && p.special == g.special && p.complete == g.complete) << "id " << id;
    ASSERT_EQ(p.complete, utf8_is_valid(p.bytes)) << "id " << id;
    partial += !p.complete;
  }
  EXPECT_GT(partial, 1000);  // byte-level pieces of multi-byte characters
  const std::vector<int32_t> bad = {-1, tok->vocab_size(), 1 << 30};
  for (int32_t id : bad) {
    const TokenPieceTable::Piece p = table.get(id);
    EXPECT_TRUE(p.bytes.empty() && !p.special && p.complete) << "id " << id;
  }
  table.touch(bad);  // skips them (reading entry 1 << 30, 16 GiB past the table, would fault)
}

// Streams of arbitrary vocabulary ids (whole characters, partial ones and specials mixed, the way
// a random-weight model samples) decode exactly as decode() of the whole stream.
TEST(TokenizerDetokenizer, random_vocabulary_streams_match_full_decode) {
  const Tokenizer* tok = qwen();
  ASSERT_NE(tok, nullptr);
  std::mt19937 rng(7);
  for (int iter = 0; iter < 200; ++iter) {
    std::vector<int32_t> ids(1 + rng() % 64);
    for (int32_t& id : ids) id = static_cast<int32_t>(rng() % static_cast<uint32_t>(tok->vocab_size()));
    const bool skip = iter % 2 == 1;
    ASSERT_EQ(stream(*tok, ids, skip), tok->decode(ids, skip)) << "iteration " << iter;
  }
}

TEST(TokenizerDetokenizer, skips_special_tokens_on_request) {
  const Tokenizer* tok = qwen();
  ASSERT_NE(tok, nullptr);
  const auto ids = tok->encode("<|im_start|>assistant\nok<|im_end|>");
  EXPECT_EQ(stream(*tok, ids, true), "assistant\nok");
  EXPECT_EQ(stream(*tok, ids, false), "<|im_start|>assistant\nok<|im_end|>");
}

}  // namespace
}  // namespace mpserve::tokenizer
