// Builds small tokenizer.json documents for unit tests, so each test states its vocabulary.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "tokenizer/byte_level.h"

namespace mpserve::tokenizer::testing {

// A byte-level BPE tokenizer.json: the 256 byte tokens (ids 0..255), then `extra` tokens
// (written as raw text, converted to byte-level form) from id 256, merges given as raw text.
inline nlohmann::json tiny_tokenizer_json(const std::vector<std::string>& extra,
                                          const std::vector<std::pair<std::string, std::string>>& merges) {
  nlohmann::json vocab = nlohmann::json::object();
  for (int b = 0; b < 256; ++b) vocab[byte_to_utf8(static_cast<uint8_t>(b))] = b;
  int id = 256;
  for (const auto& t : extra) vocab[bytes_to_byte_level(t)] = id++;
  nlohmann::json m = nlohmann::json::array();
  for (const auto& [l, r] : merges) m.push_back({bytes_to_byte_level(l), bytes_to_byte_level(r)});
  return {
      {"version", "1.0"},
      {"added_tokens", nlohmann::json::array()},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers",
         {{{"type", "Split"},
           {"pattern", {{"Regex", R"(\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+|\s+)"}}},
           {"behavior", "Isolated"},
           {"invert", false}},
          {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}}},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", m}}},
  };
}

}  // namespace mpserve::tokenizer::testing
