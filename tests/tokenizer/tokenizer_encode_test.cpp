// encode/decode behaviour on the real Qwen tokenizer and on small hand-made vocabularies.
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "tokenizer/byte_level.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"
#include "tokenizer_test_json.h"
#include "tokenizer_test_util.h"

namespace mpserve::tokenizer {
namespace {

using testing::qwen;
using testing::tiny_tokenizer_json;

std::unique_ptr<Tokenizer> make(const nlohmann::json& j, const std::string& config = "") {
  auto r = Tokenizer::from_json(j.dump(), config, "test/tokenizer.json");
  EXPECT_TRUE(r) << r.error();
  return r ? std::move(r).value() : nullptr;
}

TEST(TokenizerEncode, qwen_metadata_comes_from_tokenizer_config) {
  const Tokenizer* tok = qwen();
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->vocab_size(), 151669);
  EXPECT_EQ(tok->eos_token_id(), std::optional<int32_t>(151645));  // <|im_end|>
  EXPECT_EQ(tok->bos_token_id(), std::nullopt);                    // bos_token is null
  EXPECT_EQ(tok->chat_template_kind(), "chatml");
  EXPECT_EQ(tok->token_to_id("<|endoftext|>"), std::optional<int32_t>(151643));
  EXPECT_EQ(tok->token_to_id("Ġthe"), std::optional<int32_t>(279));
  EXPECT_EQ(tok->token_to_id("no such token"), std::nullopt);
  EXPECT_EQ(tok->token_bytes(279), " the");
  EXPECT_EQ(tok->token_bytes(151644), "<|im_start|>");
  EXPECT_EQ(tok->token_bytes(-1), "");
  EXPECT_EQ(tok->token_bytes(10000000), "");
  EXPECT_TRUE(tok->is_special(151644));
  EXPECT_FALSE(tok->is_special(*tok->token_to_id("<think>")));  // added, but special = false
  EXPECT_FALSE(tok->is_special(279));
}

TEST(TokenizerEncode, special_tokens_in_text_are_matched_longest_first) {
  const Tokenizer* tok = qwen();
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->encode("<|im_start|>user\nhi<|im_end|>"),
            (std::vector<int32_t>{151644, 872, 198, 6023, 151645}));
  EXPECT_EQ(tok->encode("<|endoftext|><|endoftext|>"), (std::vector<int32_t>{151643, 151643}));
  // A broken marker is ordinary text.
  const auto ids = tok->encode("<|im_start");
  for (int32_t id : ids) EXPECT_FALSE(tok->is_special(id));
  EXPECT_EQ(tok->decode(ids), "<|im_start");
  EXPECT_TRUE(tok->encode("").empty());
}

TEST(TokenizerEncode, decode_skips_special_tokens_on_request) {
  const Tokenizer* tok = qwen();
  ASSERT_NE(tok, nullptr);
  const auto ids = tok->encode("<|im_start|>assistant\nHello!<|im_end|>");
  EXPECT_EQ(tok->decode(ids), "<|im_start|>assistant\nHello!<|im_end|>");
  EXPECT_EQ(tok->decode(ids, /*skip_special_tokens=*/true), "assistant\nHello!");
  EXPECT_EQ(tok->decode({279, -5, 99999999, 279}), " the the");  // unknown ids are skipped
}

TEST(TokenizerEncode, decode_replaces_each_maximal_ill_formed_subpart_with_fffd) {
  const Tokenizer* tok = qwen();
  ASSERT_NE(tok, nullptr);
  const auto byte_ids = [&](std::string_view bytes) {
    std::vector<int32_t> ids;
    for (char c : bytes) ids.push_back(*tok->token_to_id(byte_to_utf8(static_cast<uint8_t>(c))));
    return ids;
  };
  const std::string r(kReplacementChar);
  EXPECT_EQ(tok->decode(byte_ids("\xF0\x9F\x98\x80")), "\xF0\x9F\x98\x80");  // an emoji, byte by byte
  EXPECT_EQ(tok->decode(byte_ids("\xE2\x82")), r);                          // truncated: one U+FFFD
  EXPECT_EQ(tok->decode(byte_ids("\xF0\x9F\x98" "A")), r + "A");
  EXPECT_EQ(tok->decode(byte_ids("\xED\xA0\x80")), r + r + r);  // a surrogate: three
  EXPECT_EQ(tok->decode(byte_ids("\xC0\xAF")), r + r);          // overlong
  EXPECT_EQ(tok->decode(byte_ids("\xFF" "a\x80")), r + "a" + r);
}

TEST(TokenizerEncode, random_bytes_round_trip_through_byte_tokens) {
  const Tokenizer* tok = qwen();
  ASSERT_NE(tok, nullptr);
  std::mt19937 rng(7);
  for (int iter = 0; iter < 2000; ++iter) {
    std::string bytes(rng() % 24, '\0');
    for (char& c : bytes) c = static_cast<char>(rng() & 0xFF);
    std::vector<int32_t> ids;
    std::string joined;
    for (char c : bytes) {
      ids.push_back(*tok->token_to_id(byte_to_utf8(static_cast<uint8_t>(c))));
      joined += tok->token_bytes(ids.back());
    }
    ASSERT_EQ(joined, bytes);
    const std::string text = tok->decode(ids);
    ASSERT_TRUE(utf8_is_valid(text));
    ASSERT_EQ(text, utf8_lossy(bytes));
    if (utf8_is_valid(bytes)) {
      ASSERT_EQ(text, bytes);
    }
  }
}

TEST(TokenizerEncode, merges_apply_lowest_rank_first_and_leftmost_on_ties) {
  // "aaaa...": a+a (rank 0) pairs up from the left, then aa+aa, then aaaa+aaaa.
  const auto tok = make(tiny_tokenizer_json({"aa", "aaaa", "aaaaaaaa", "ab", "abc", "bc"},
                                            {{"a", "a"}, {"aa", "aa"}, {"aaaa", "aaaa"}, {"b", "c"}, {"a", "b"},
                                             {"a", "bc"}}));
  ASSERT_NE(tok, nullptr);
  const int32_t aa = 256, a4 = 257, a8 = 258, ab = 259, abc = 260, bc = 261;
  EXPECT_EQ(tok->encode("aaa"), (std::vector<int32_t>{aa, 'a'}));
  // 10 symbols takes the quadratic scan, 30 the heap; both must agree with the same rule.
  EXPECT_EQ(tok->encode(std::string(10, 'a')), (std::vector<int32_t>{a8, aa}));
  EXPECT_EQ(tok->encode(std::string(30, 'a')), (std::vector<int32_t>{a8, a8, a8, a4, aa}));
  // b+c (rank 3) beats a+b (rank 4), so "abc" is a + bc, then a+bc (rank 5).
  EXPECT_EQ(tok->encode("abc"), (std::vector<int32_t>{abc}));
  EXPECT_EQ(tok->encode("ab"), (std::vector<int32_t>{ab}));
  (void)bc;
  std::string long_word;
  for (int i = 0; i < 20; ++i) long_word += "abc";
  EXPECT_EQ(tok->encode(long_word), std::vector<int32_t>(20, abc));
}

TEST(TokenizerEncode, ignore_merges_emits_whole_word_tokens) {
  auto j = tiny_tokenizer_json({"ab", "xabc", "abc"}, {{"a", "b"}, {"ab", "c"}});
  const auto plain = make(j);
  ASSERT_NE(plain, nullptr);
  EXPECT_EQ(plain->encode("xabc"), (std::vector<int32_t>{'x', 258}));
  j["model"]["ignore_merges"] = true;
  const auto whole = make(j);
  ASSERT_NE(whole, nullptr);
  EXPECT_EQ(whole->encode("xabc"), (std::vector<int32_t>{257}));
}

TEST(TokenizerEncode, added_tokens_with_lstrip_and_rstrip_take_adjacent_spaces) {
  auto j = tiny_tokenizer_json({}, {});
  j["added_tokens"] = {
      {{"id", 300}, {"content", "<mask>"}, {"special", true}, {"lstrip", true}, {"rstrip", false}},
      {{"id", 301}, {"content", "<sep>"}, {"special", false}, {"lstrip", false}, {"rstrip", true}},
  };
  const auto tok = make(j);
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->encode("a  <mask> b"), (std::vector<int32_t>{'a', 300, ' ', 'b'}));
  EXPECT_EQ(tok->encode("a <sep>  b"), (std::vector<int32_t>{'a', ' ', 301, 'b'}));
  EXPECT_EQ(tok->vocab_size(), 302);
  EXPECT_TRUE(tok->is_special(300));
  EXPECT_FALSE(tok->is_special(301));
  EXPECT_EQ(tok->decode({300, 'x', 301}, true), "x<sep>");
}

TEST(TokenizerEncode, nfc_applies_only_when_the_normalizer_says_so) {
  auto j = tiny_tokenizer_json({}, {});
  const std::string nfd = "e\xCC\x81";  // e + U+0301
  const auto raw = make(j);
  ASSERT_NE(raw, nullptr);
  EXPECT_EQ(raw->decode(raw->encode(nfd)), nfd);
  j["normalizer"] = {{"type", "NFC"}};
  const auto composed = make(j);
  ASSERT_NE(composed, nullptr);
  EXPECT_EQ(composed->decode(composed->encode(nfd)), "\xC3\xA9");  // U+00E9
  // Qwen: NFD text encodes like its NFC form.
  const Tokenizer* q = qwen();
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(q->encode("cafe\xCC\x81"), q->encode("caf\xC3\xA9"));
}

TEST(TokenizerEncode, llama3_kind_comes_from_the_chat_template) {
  const auto j = tiny_tokenizer_json({}, {});
  const auto tok = make(j, R"({"chat_template": "{{ '<|start_header_id|>' + role }}", "eos_token": null})");
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->chat_template_kind(), "llama3");
  const auto listed = make(j, R"({"chat_template": [{"name": "default", "template": "<|start_header_id|>"}]})");
  ASSERT_NE(listed, nullptr);
  EXPECT_EQ(listed->chat_template_kind(), "llama3");
  const auto chatml = make(j, R"({"chat_template": "<|im_start|>", "eos_token": {"content": "a"}, "bos_token": "b"})");
  ASSERT_NE(chatml, nullptr);
  EXPECT_EQ(chatml->chat_template_kind(), "chatml");
  EXPECT_EQ(chatml->eos_token_id(), std::optional<int32_t>('a'));
  EXPECT_EQ(chatml->bos_token_id(), std::optional<int32_t>('b'));
}

}  // namespace
}  // namespace mpserve::tokenizer
