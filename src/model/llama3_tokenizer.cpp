// Derives a Llama-3-style byte-level BPE tokenizer from the Qwen one: make-model has no Llama
// tokenizer to copy, and the shape (vocab 128256, special ids, regex) is what matters here.
#include "model/llama3_tokenizer.h"

#include <algorithm>
#include <unordered_set>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace mpserve::model {

namespace {

using nlohmann::json;
using nlohmann::ordered_json;

// Llama 3.x: digits split into groups of up to three, otherwise as Qwen2's pattern.
constexpr const char* kLlama3SplitRegex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// note: the template covers what mpserve renders (roles and plain string content); it is ours,
// written in the Llama 3 format (header ids around the role, <|eot_id|> after each turn).
constexpr const char* kLlama3ChatTemplate =
    "{{- bos_token }}\n"
    "{%- for message in messages %}\n"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + "
    "'<|eot_id|>' }}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n"
    "{%- endif %}\n";

std::string special_token_name(int32_t id) {
  switch (id - kLlama3FirstSpecialId) {
    case 0: return "<|begin_of_text|>";
    case 1: return "<|end_of_text|>";
    case 2: return "<|reserved_special_token_0|>";
    case 3: return "<|reserved_special_token_1|>";
    case 4: return "<|finetune_right_pad_id|>";
    case 5: return "<|reserved_special_token_2|>";
    case 6: return "<|start_header_id|>";
    case 7: return "<|end_header_id|>";
    case 8: return "<|eom_id|>";
    case 9: return "<|eot_id|>";
    case 10: return "<|python_tag|>";
    default: return "<|reserved_special_token_" + std::to_string(id - kLlama3FirstSpecialId - 8) + "|>";
  }
}

// A merge as its two parts; tokenizer.json spells it "a b" (older) or ["a", "b"] (newer).
bool merge_parts(const json& m, std::string* a, std::string* b) {
  if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
    *a = m[0].get<std::string>();
    *b = m[1].get<std::string>();
    return true;
  }
  if (m.is_string()) {
    const std::string& s = m.get_ref<const std::string&>();
    size_t space = s.find(' ');
    if (space == std::string::npos) return false;
    *a = s.substr(0, space);
    *b = s.substr(space + 1);
    return true;
  }
  return false;
}

ordered_json byte_level() {
  return {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}};
}

}  // namespace

Result<std::string> derive_llama3_tokenizer_json(std::string_view qwen_tokenizer_json, const std::string& source) {
  json src = json::parse(qwen_tokenizer_json.begin(), qwen_tokenizer_json.end(), nullptr, false);
  if (src.is_discarded() || !src.is_object()) return Status::errorf("{}: not a JSON object", source);
  auto model = src.find("model");
  if (model == src.end() || !model->is_object() || !model->contains("vocab") || !model->at("vocab").is_object() ||
      !model->contains("merges") || !model->at("merges").is_array()) {
    return Status::errorf("{}: expected a BPE model with 'vocab' and 'merges'", source);
  }

  std::vector<std::pair<int64_t, std::string>> kept;
  std::unordered_set<std::string> kept_set;
  for (auto it = model->at("vocab").begin(); it != model->at("vocab").end(); ++it) {
    if (!it.value().is_number_integer()) return Status::errorf("{}: vocab id of '{}' is not an integer", source, it.key());
    int64_t id = it.value().get<int64_t>();
    if (id >= 0 && id < kLlama3FirstSpecialId) {
      kept.emplace_back(id, it.key());
      kept_set.insert(it.key());
    }
  }
  std::sort(kept.begin(), kept.end());
  // note: ordered_json's operator[] searches linearly; appending to its underlying vector keeps
  // building 128k entries linear (the tokens are unique: they were keys of a JSON object).
  ordered_json vocab = ordered_json::object();
  auto& entries = static_cast<std::vector<std::pair<const std::string, ordered_json>>&>(
      vocab.get_ref<ordered_json::object_t&>());
  entries.reserve(kept.size());
  for (const auto& [id, token] : kept) entries.emplace_back(token, id);

  ordered_json merges = ordered_json::array();
  std::string a, b;
  for (const json& m : model->at("merges")) {
    if (!merge_parts(m, &a, &b)) return Status::errorf("{}: malformed merge entry", source);
    if (kept_set.count(a) && kept_set.count(b) && kept_set.count(a + b)) merges.push_back({a, b});
  }

  ordered_json added = ordered_json::array();
  for (int32_t id = kLlama3FirstSpecialId; id < kLlama3VocabSize; ++id) {
    added.push_back({{"id", id},
                     {"content", special_token_name(id)},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", true}});
  }

  ordered_json out;
  out["version"] = "1.0";
  out["truncation"] = nullptr;
  out["padding"] = nullptr;
  out["added_tokens"] = std::move(added);
  out["normalizer"] = nullptr;
  out["pre_tokenizer"] = {
      {"type", "Sequence"},
      {"pretokenizers",
       {{{"type", "Split"}, {"pattern", {{"Regex", kLlama3SplitRegex}}}, {"behavior", "Isolated"}, {"invert", false}},
        byte_level()}}};
  const std::string bos = special_token_name(kLlama3FirstSpecialId);
  auto special = [&](int type_id) { return ordered_json{{"SpecialToken", {{"id", bos}, {"type_id", type_id}}}}; };
  auto sequence = [](const char* id, int type_id) {
    return ordered_json{{"Sequence", {{"id", id}, {"type_id", type_id}}}};
  };
  ordered_json bos_info = {{"id", bos}, {"ids", {kLlama3FirstSpecialId}}, {"tokens", {bos}}};
  ordered_json templ = {{"type", "TemplateProcessing"},
                        {"single", {special(0), sequence("A", 0)}},
                        {"pair", {special(0), sequence("A", 0), special(1), sequence("B", 1)}},
                        {"special_tokens", {{bos, bos_info}}}};
  out["post_processor"] = {{"type", "Sequence"}, {"processors", {byte_level(), templ}}};
  out["decoder"] = byte_level();
  // note: ignore_merges stays false (real Llama 3 sets true) so every BPE implementation,
  // ours included, tokenizes the derived vocabulary the same way.
  out["model"] = {{"type", "BPE"},
                  {"dropout", nullptr},
                  {"unk_token", nullptr},
                  {"continuing_subword_prefix", ""},
                  {"end_of_word_suffix", ""},
                  {"fuse_unk", false},
                  {"byte_fallback", false},
                  {"ignore_merges", false},
                  {"vocab", std::move(vocab)},
                  {"merges", std::move(merges)}};
  return out.dump();
}

std::string llama3_tokenizer_config_json() {
  ordered_json decoder = ordered_json::object();
  for (int32_t id = kLlama3FirstSpecialId; id < kLlama3VocabSize; ++id) {
    decoder[std::to_string(id)] = {{"content", special_token_name(id)},
                                   {"lstrip", false},
                                   {"normalized", false},
                                   {"rstrip", false},
                                   {"single_word", false},
                                   {"special", true}};
  }
  ordered_json j;
  j["add_bos_token"] = true;
  j["add_eos_token"] = false;
  j["added_tokens_decoder"] = std::move(decoder);
  j["bos_token"] = special_token_name(kLlama3FirstSpecialId);
  j["chat_template"] = kLlama3ChatTemplate;
  j["clean_up_tokenization_spaces"] = true;
  j["eos_token"] = special_token_name(kLlama3FirstSpecialId + 9);
  j["model_input_names"] = {"input_ids", "attention_mask"};
  j["model_max_length"] = 131072;
  j["tokenizer_class"] = "PreTrainedTokenizerFast";
  return j.dump(2) + "\n";
}

}  // namespace mpserve::model
