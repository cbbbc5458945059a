// tokenizer.json "added_tokens": strings (special ones such as <|im_start|> included) that are
// found literally in the text before normalization and pre-tokenization and map straight to ids.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace mpserve::tokenizer {

struct AddedToken {
  int32_t id = -1;
  std::string content;
  bool special = false;  // skipped by decode(skip_special_tokens = true)
  bool lstrip = false;   // the match also takes the whitespace on its left
  bool rstrip = false;   // the match also takes the whitespace on its right
};

class AddedTokenMatcher {
 public:
  explicit AddedTokenMatcher(const std::vector<AddedToken>& tokens);

  // One piece of the input: plain text (id < 0) or one added token.
  struct Segment {
    std::string_view text;
    int32_t id;
  };
  // Cuts text at the leftmost, then longest, occurrences of added tokens (HF's leftmost-longest
  // matching); plain segments are never empty.
  void split(std::string_view text, std::vector<Segment>* out) const;

 private:
  struct Candidate {
    std::string content;
    int32_t id;
    bool lstrip, rstrip;
  };
  // Candidates by first byte, longest first.
  std::array<std::vector<Candidate>, 256> by_first_byte_;
  bool any_ = false;
};

}  // namespace mpserve::tokenizer
