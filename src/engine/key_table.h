// Map from 64-bit hash keys to non-negative int32 values (the prefix cache's block ids) without
// an allocation per entry: linear probing over a power-of-two table kept at most half full
// (doubled when an insert would pass that), deletion by backward shift (no tombstones, so probe
// runs never fill with dead slots in a long-running server). The keys must already be mixed
// hashes: their low bits pick the home slot.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "common/check.h"

namespace mpserve::engine {

class KeyTable {
 public:
  KeyTable() : slots_(kMinSlots), mask_(kMinSlots - 1) {}

  // The value stored for key, or -1.
  int32_t find(uint64_t key) const {
    for (size_t i = key & mask_;; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (s.value < 0) return -1;
      if (s.key == key) return s.value;
    }
  }

  // Stores key -> value (value >= 0); false, and nothing changes, when the key is present.
  bool insert(uint64_t key, int32_t value) {
    MPS_CHECK(value >= 0);
    if (2 * (size_t(size_) + 1) > slots_.size()) grow();
    for (size_t i = key & mask_;; i = (i + 1) & mask_) {
      Slot& s = slots_[i];
      if (s.value < 0) {
        s = Slot{key, value};
        ++size_;
        return true;
      }
      if (s.key == key) return false;
    }
  }

  // Removes key, which must be present.
  void erase(uint64_t key) {
    size_t i = key & mask_;
    while (slots_[i].value < 0 || slots_[i].key != key) {
      MPS_CHECK_MSG(slots_[i].value >= 0, "key {:#x} not in the table", key);
      i = (i + 1) & mask_;
    }
    // Pull later entries of the probe run into the hole when their home slot is not cyclically
    // within (hole, their slot]: every remaining key stays reachable from its home.
    for (size_t j = (i + 1) & mask_; slots_[j].value >= 0; j = (j + 1) & mask_) {
      const size_t home = slots_[j].key & mask_;
      const bool movable = i <= j ? (home <= i || home > j) : (home <= i && home > j);
      if (movable) {
        slots_[i] = slots_[j];
        i = j;
      }
    }
    slots_[i] = Slot{};
    --size_;
  }

  int32_t size() const { return size_; }
  size_t capacity() const { return slots_.size(); }

 private:
  struct Slot {
    uint64_t key = 0;
    int32_t value = -1;  // -1: empty
  };
  static constexpr size_t kMinSlots = 1024;

  void grow() {
    std::vector<Slot> old(slots_.size() * 2);
    old.swap(slots_);
    mask_ = slots_.size() - 1;
    size_ = 0;
    for (const Slot& s : old)
      if (s.value >= 0) insert(s.key, s.value);
  }

  std::vector<Slot> slots_;
  size_t mask_;
  int32_t size_ = 0;
};

}  // namespace mpserve::engine
