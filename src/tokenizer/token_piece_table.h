// id -> a token's bytes, packed for the streaming decoder.
//
// At batch 256 the engine detokenizes one token per sequence and step, and a random-weight model
// samples tokens from all over the vocabulary, so every lookup is a cache miss. Through
// Tokenizer::token_bytes a lookup was a virtual call, a miss on the offset table, a dependent miss
// on the byte blob and a third on the special-token bits, and then the UTF-8 scan of the bytes.
// Here each id has one 16-byte entry holding its bytes (up to 14 inline), whether it is a
// special token, and whether its bytes are whole, well-formed UTF-8 (then a decoder with nothing
// held back appends them as they are, without scanning): one cache line, and an address known
// from the id alone, so the engine can load a step's entries together (touch()).
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

namespace mpserve::tokenizer {

class Tokenizer;

class TokenPieceTable {
 public:
  struct Piece {
    std::string_view bytes;  // raw bytes (byte-level mapping undone); empty for unknown ids
    bool special = false;    // an added token marked special
    bool complete = true;    // bytes are entirely well-formed UTF-8 (true for empty)
  };

  TokenPieceTable() = default;
  // One entry per id: bytes[id], and special[id] (ids past special's end are not special).
  TokenPieceTable(const std::vector<std::string>& bytes, const std::vector<bool>& special);
  // Reads every id of tok once (token_bytes, is_special).
  explicit TokenPieceTable(const Tokenizer& tok);

  int32_t size() const { return static_cast<int32_t>(entries_.size()); }

  Piece get(int32_t id) const {
    if (id < 0 || id >= size()) return {};
    const Entry& e = entries_[static_cast<size_t>(id)];
    Piece p;
    p.special = (e.flags & kSpecial) != 0;
    p.complete = (e.flags & kComplete) != 0;
    if (e.flags & kLong) {
      uint32_t where[2];  // offset into long_bytes_, length
      std::memcpy(where, e.bytes, sizeof where);
      p.bytes = std::string_view(long_bytes_.data() + where[0], where[1]);
    } else {
      p.bytes = std::string_view(e.bytes, e.len);
    }
    return p;
  }

  // Loads the entries of `ids` into the cache, all at once: independent loads that the core
  // overlaps. (Software prefetches of the same entries did not help: EngineHostBench, random
  // tokens, batch 256, read 49 us a step with them against 23 with these loads, probably because
  // a prefetch that misses the TLB is dropped.) Unknown ids are skipped.
  template <typename Ids>
  void touch(const Ids& ids) const {
    uint8_t sink = 0;
    for (const int32_t id : ids) {
      if (id >= 0 && id < size()) sink |= entries_[static_cast<size_t>(id)].flags;
    }
    asm volatile("" : : "r"(sink));
  }

 private:
  static constexpr uint8_t kSpecial = 1, kComplete = 2, kLong = 4;
  static constexpr size_t kInline = 14;
  struct alignas(16) Entry {
    uint8_t len = 0;    // inline byte count (unused when kLong)
    uint8_t flags = 0;
    char bytes[kInline] = {};  // the bytes, or (kLong) two uint32: offset and length in long_bytes_
  };
  static_assert(sizeof(Entry) == 16);

  void set(int32_t id, std::string_view bytes, bool special);

  std::vector<Entry> entries_;
  std::string long_bytes_;  // bytes of the tokens longer than kInline
};

}  // namespace mpserve::tokenizer
