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
//
// The host side of a decode step touches this class for every sequence, and a GPU's pool has
// hundreds of thousands of blocks: no operation allocates memory. The free list is intrusive
// (links in the block array), the key map is one open-addressing table, and a cached block's
// tokens live in one flat array indexed by block id.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "engine/key_table.h"
#include "engine/sequence.h"

namespace mpserve::engine {

class BlockManager {
 public:
  BlockManager(int32_t num_blocks, int32_t block_size, bool enable_prefix_caching);

  int32_t block_size() const { return block_size_; }
  int32_t num_total_blocks() const { return static_cast<int32_t>(blocks_.size()); }
  // Blocks with ref count 0, cached-but-evictable ones included.
  int32_t num_free_blocks() const { return num_free_; }
  int32_t num_used_blocks() const { return num_total_blocks() - num_free_blocks(); }
  // Blocks currently holding a prefix-cache key (in use or evictable).
  int32_t num_cached_blocks() const { return cached_.size(); }
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
    int32_t prev = -1, next = -1;  // free-list neighbours while ref_count == 0 (-1: none)
    bool cached = false;           // holds a key in cached_, and its tokens in cached_tokens_
    uint64_t key = 0;              // hash-chain key, valid when cached
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
  // The free list: uncached blocks at the front (taken first), cached ones at the back, so
  // evicting a cached block is the last resort and the least recently freed one goes first.
  void free_list_push(int32_t id, bool front);
  void free_list_remove(int32_t id);
  const int32_t* block_tokens(int32_t id) const { return cached_tokens_.data() + size_t(id) * size_t(block_size_); }
  int32_t* block_tokens(int32_t id) { return cached_tokens_.data() + size_t(id) * size_t(block_size_); }

  const int32_t block_size_;
  const bool prefix_caching_;
  std::vector<Block> blocks_;
  int32_t free_head_ = -1, free_tail_ = -1, num_free_ = 0;
  KeyTable cached_;
  // [num_blocks][block_size] tokens of the cached blocks (guards against hash collisions).
  std::vector<int32_t> cached_tokens_;
  int64_t cache_hit_tokens_ = 0;
  int64_t cache_hit_blocks_ = 0;
};

}  // namespace mpserve::engine
