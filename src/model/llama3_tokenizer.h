// Llama-3-style tokenizer files derived from the Qwen tokenizer, for make-model's llama3.2-1b.
// Internal to the model module.
#pragma once

#include <string>
#include <string_view>

#include "common/status.h"

namespace mpserve::model {

// The first id of the Llama 3 special tokens; ordinary vocabulary entries sit below it.
inline constexpr int32_t kLlama3FirstSpecialId = 128000;
inline constexpr int32_t kLlama3VocabSize = 128256;

// tokenizer.json text: the Qwen vocabulary entries with id < 128000, the merges whose parts and
// result all survive, the 256 Llama 3 special tokens at 128000.., and the Llama 3 split regex.
Result<std::string> derive_llama3_tokenizer_json(std::string_view qwen_tokenizer_json, const std::string& source);

// tokenizer_config.json text: bos <|begin_of_text|>, eos <|eot_id|>, a Llama 3 chat template.
std::string llama3_tokenizer_config_json();

}  // namespace mpserve::model
