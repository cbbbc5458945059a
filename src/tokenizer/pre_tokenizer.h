// tokenizer.json "pre_tokenizer": Split (regex or literal, PCRE2) and ByteLevel, alone or in a
// Sequence. Cuts normalized text into words that BPE then encodes independently.
#pragma once

#include <deque>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "common/status.h"

namespace mpserve::tokenizer {

class PreTokenizer {
 public:
  ~PreTokenizer();
  PreTokenizer(PreTokenizer&&) noexcept;
  PreTokenizer& operator=(PreTokenizer&&) noexcept;

  // `config` is the pre_tokenizer value of tokenizer.json (null: the whole text is one word).
  static Result<PreTokenizer> from_json(const nlohmann::json& config);

  // Appends the words of `text` to *words. Words point into `text` or into *storage (for words
  // that a step rewrote, such as an added prefix space); both must outlive their use.
  void split(std::string_view text, std::vector<std::string_view>* words, std::deque<std::string>* storage) const;

 private:
  struct Step;
  PreTokenizer();
  std::vector<std::unique_ptr<Step>> steps_;
};

}  // namespace mpserve::tokenizer
