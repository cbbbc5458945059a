// Paged KV-cache block manager with automatic prefix caching.
//
// The backend owns KV memory as `num_blocks` blocks of `block_size` token slots; this class
// decides which sequence uses which block. Every mutation has a query beside it
// (can_allocate/allocate, can_append/append_slots), so the scheduler checks first and then
// commits a decision that cannot fail halfway.
//
// Prefix caching: a FULL block whose KV has been written is keyed by a hash chain
// hash(parent key, block tokens). A sequence whose leading full blocks match cached keys shares
// those blocks (ref-counted) instead of recomputing them. Only full blocks are shared and a
// shared block is never written again, so no copy-on-write is needed. A cached block whose
// ref count drops to 0 stays cached on the free list (evictable, least recently freed first)
// until a fresh allocation takes it.
#pragma once

#include <cstdint>
#include <list>
#include <span>
#include <unordered_map>
#include <vector>

#include "engine/sequence.h"

namespace mpserve::engine {

class BlockManager {
 public:
  BlockManager(int32_t num_blocks, int32_t block_size, bool enable_prefix_caching);

  int32_t block_size() const { return block_size_; }
  int32_t num_total_blocks() const { return static_cast<int32_t>(blocks_.size()); }
  // Blocks with ref count 0, cached-but-evictable ones included.
  int32_t num_free_blocks() const { return static_cast<int32_t>(free_list_.size()); }
  int32_t num_used_blocks() const { return num_total_blocks() - num_free_blocks(); }
  // Blocks currently holding a prefix-cache key (in use or evictable).
  int32_t num_cached_blocks() const { return static_cast<int32_t>(cached_.size()); }
  // Cumulative tokens served from the prefix cache by allocate().
  int64_t cache_hit_tokens() const { return cache_hit_tokens_; }
  int64_t cache_hit_blocks() const { return cache_hit_blocks_; }
  int32_t blocks_for_tokens(int64_t num_tokens) const {
    return static_cast<int32_t>((num_tokens + block_size_ - 1) / block_size_);
  }

  // Tokens of seq's leading full blocks found in the prefix cache. Always < seq.num_tokens(),
  // so at least one token is left to compute and sample from.
  int32_t num_cached_tokens(const Sequence& seq) const;
  // Whether allocate(seq, n) would succeed.
  bool can_allocate(const Sequence& seq, int32_t num_new_tokens) const;
  // Admits a sequence that holds no blocks: shares its cached prefix (num_computed becomes the
  // cached length) and allocates blocks for `num_new_tokens` more. Requires can_allocate.
  void allocate(Sequence& seq, int32_t num_new_tokens);
  // Whether append_slots(seq, n) would succeed.
  bool can_append(const Sequence& seq, int32_t num_new_tokens) const;
  // Grows the block table to cover num_computed + n tokens. Requires can_append.
  void append_slots(Sequence& seq, int32_t num_new_tokens);
  // After a step wrote seq's KV up to num_computed: offers newly completed full blocks to the
  // prefix cache.
  void on_computed(Sequence& seq);
  // Drops seq's references (finish, abort, preemption); resets num_computed to 0.
  void free(Sequence& seq);

  // Aborts with a message on a broken invariant. `live` = every sequence that may hold blocks.
  void check_invariants(std::span<const Sequence* const> live) const;

 private:
  struct Block {
    int32_t ref_count = 0;
    bool cached = false;           // holds a key in cached_
    uint64_t key = 0;              // hash-chain key, valid when cached
    std::vector<int32_t> tokens;   // [block_size] tokens when cached; guards against hash collisions
    std::list<int32_t>::iterator free_pos;  // position in free_list_ when ref_count == 0
  };
  struct PrefixHit {
    std::vector<int32_t> blocks;
    std::vector<uint64_t> keys;
    int32_t num_free = 0;  // hit blocks with ref count 0, which leave the free list when taken
  };

  uint64_t block_key(uint64_t parent, std::span<const int32_t> tokens) const;
  PrefixHit find_prefix(const Sequence& seq) const;
  int32_t take_free_block();
  void uncache(int32_t id);

  const int32_t block_size_;
  const bool prefix_caching_;
  std::vector<Block> blocks_;
  // Front: taken first. Uncached blocks go to the front, cached ones to the back, so evicting a
  // cached block is the last resort and the least recently freed one goes first.
  std::list<int32_t> free_list_;
  std::unordered_map<uint64_t, int32_t> cached_;
  int64_t cache_hit_tokens_ = 0;
  int64_t cache_hit_blocks_ = 0;
};

}  // namespace mpserve::engine
