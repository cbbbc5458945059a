// The byte-level BPE model: vocabulary, merge ranks and the merge loop, with a per-word cache.
#pragma once

#include <array>
#include <cstdint>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "common/status.h"

namespace mpserve::tokenizer {

// Open-addressing hash map from a token pair (left id, right id) to the merge that joins them.
// note: merges are looked up several times per input byte, so this is a flat table with
// linear probing rather than std::unordered_map's node per entry.
class MergeTable {
 public:
  struct Merge {
    int32_t rank;    // position in tokenizer.json's merges list; lower merges first
    int32_t merged;  // id of the joined token
  };
  void reserve(size_t n);
  // A pair listed twice keeps its last rank, as HF's BPE (built by collecting into a map) does.
  void insert(int32_t left, int32_t right, Merge m);
  const Merge* find(int32_t left, int32_t right) const;
  size_t size() const { return size_; }

 private:
  static uint64_t key(int32_t l, int32_t r) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(l)) << 32) | static_cast<uint32_t>(r);
  }
  static constexpr uint64_t kEmpty = ~uint64_t{0};
  size_t slot(uint64_t k) const;
  std::vector<uint64_t> keys_;
  std::vector<Merge> values_;
  size_t mask_ = 0;
  size_t size_ = 0;
};

class BpeModel {
 public:
  // `model` is tokenizer.json's "model" object (type BPE). Vocabulary strings are byte-level.
  static Result<BpeModel> from_json(const nlohmann::json& model);
  BpeModel(BpeModel&& other) noexcept;
  BpeModel& operator=(BpeModel&&) = delete;

  // Appends the ids of one pre-tokenized word (raw bytes). Thread-safe.
  void encode_word(std::string_view word, std::vector<int32_t>* ids) const;

  // Vocabulary, in byte-level form ("Ġthe") and as raw bytes (" the"), indexed by id; ids
  // without a token (holes) have empty strings.
  const std::vector<std::string>& tokens() const { return tokens_; }
  const std::unordered_map<std::string, int32_t>& vocab() const { return vocab_; }
  bool ignore_merges() const { return ignore_merges_; }

 private:
  BpeModel() = default;
  void merge(std::vector<int32_t>* symbols) const;

  std::unordered_map<std::string, int32_t> vocab_;  // byte-level string -> id
  std::vector<std::string> tokens_;                 // id -> byte-level string
  MergeTable merges_;
  // Id of the single-byte token for each byte; -1 when the vocabulary lacks it (the byte is
  // then dropped, as HF's BPE does with no unk_token).
  std::array<int32_t, 256> byte_ids_{};
  bool ignore_merges_ = false;

  // Words seen before -> their ids. Bounded: cleared when full.
  mutable std::shared_mutex cache_mu_;
  struct StringHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  mutable std::unordered_map<std::string, std::vector<int32_t>, StringHash, std::equal_to<>> cache_;
};

}  // namespace mpserve::tokenizer
