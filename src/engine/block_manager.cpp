#include "engine/block_manager.h"

#include <algorithm>

#include "common/check.h"

namespace mpserve::engine {
namespace {

constexpr uint64_t kRootKey = 0x6d707365727665ULL;  // parent key of a sequence's first block

uint64_t mix64(uint64_t x) {  // splitmix64 finalizer
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

}  // namespace

BlockManager::BlockManager(int32_t num_blocks, int32_t block_size, bool enable_prefix_caching)
    : block_size_(block_size),
      prefix_caching_(enable_prefix_caching),
      blocks_(std::max(num_blocks, 0)) {
  MPS_CHECK_MSG(num_blocks > 0 && block_size > 0, "num_blocks={} block_size={}", num_blocks, block_size);
  // note: written (zeroed) here, not left to first touch: page faults of a lazily mapped table
  // landed on the host path of decode steps, where EngineHostBench measured them (+3 us a step at
  // batch 256 with the H200's pool); this way a process pays them once, at start.
  if (prefix_caching_) cached_tokens_.assign(size_t(num_blocks) * size_t(block_size), 0);
  for (int32_t i = 0; i < num_blocks; ++i) free_list_push(i, /*front=*/false);
}

void BlockManager::free_list_push(int32_t id, bool front) {
  Block& b = blocks_[id];
  if (front) {
    b.prev = -1;
    b.next = free_head_;
    (free_head_ >= 0 ? blocks_[free_head_].prev : free_tail_) = id;
    free_head_ = id;
  } else {
    b.next = -1;
    b.prev = free_tail_;
    (free_tail_ >= 0 ? blocks_[free_tail_].next : free_head_) = id;
    free_tail_ = id;
  }
  ++num_free_;
}

void BlockManager::free_list_remove(int32_t id) {
  Block& b = blocks_[id];
  (b.prev >= 0 ? blocks_[b.prev].next : free_head_) = b.next;
  (b.next >= 0 ? blocks_[b.next].prev : free_tail_) = b.prev;
  b.prev = b.next = -1;
  --num_free_;
}

uint64_t BlockManager::block_key(uint64_t parent, std::span<const int32_t> tokens) const {
  uint64_t h = mix64(parent ^ 0x9e3779b97f4a7c15ULL);
  for (int32_t t : tokens) h = mix64(h ^ (static_cast<uint64_t>(static_cast<uint32_t>(t)) + 0x632be59bd9b4e019ULL));
  return h;
}

BlockManager::PrefixHit BlockManager::find_prefix(const Sequence& seq) const {
  PrefixHit hit;
  if (!prefix_caching_) return hit;
  // note: only blocks fully inside the first num_tokens - 1 tokens count, so the last token
  // is always computed and the step has a position to sample from.
  const int32_t max_blocks = (seq.num_tokens() - 1) / block_size_;
  uint64_t parent = kRootKey;
  for (int32_t i = 0; i < max_blocks; ++i) {
    std::span<const int32_t> toks(seq.tokens.data() + static_cast<size_t>(i) * block_size_, block_size_);
    uint64_t key = block_key(parent, toks);
    const int32_t id = cached_.find(key);
    if (id < 0) break;
    const Block& b = blocks_[id];
    if (!std::equal(toks.begin(), toks.end(), block_tokens(id))) break;
    hit.blocks.push_back(id);
    hit.keys.push_back(key);
    if (b.ref_count == 0) ++hit.num_free;
    parent = key;
  }
  return hit;
}

int32_t BlockManager::num_cached_tokens(const Sequence& seq) const {
  return static_cast<int32_t>(find_prefix(seq).blocks.size()) * block_size_;
}

bool BlockManager::can_allocate(const Sequence& seq, int32_t num_new_tokens) const {
  MPS_CHECK(num_new_tokens >= 0);
  PrefixHit hit = find_prefix(seq);
  const int32_t num_hit = static_cast<int32_t>(hit.blocks.size());
  const int32_t fresh = blocks_for_tokens(int64_t{num_hit} * block_size_ + num_new_tokens) - num_hit;
  return hit.num_free + std::max(fresh, 0) <= num_free_blocks();
}

void BlockManager::allocate(Sequence& seq, int32_t num_new_tokens) {
  MPS_CHECK_MSG(seq.block_table.empty() && seq.num_computed == 0, "seq {} already holds blocks", seq.id);
  MPS_CHECK_MSG(can_allocate(seq, num_new_tokens), "allocate without can_allocate (seq {})", seq.id);
  PrefixHit hit = find_prefix(seq);
  for (int32_t id : hit.blocks) {
    Block& b = blocks_[id];
    if (b.ref_count == 0) free_list_remove(id);
    ++b.ref_count;
    seq.block_table.push_back(id);
  }
  const int32_t num_hit = static_cast<int32_t>(hit.blocks.size());
  seq.block_hashes = std::move(hit.keys);
  seq.num_computed = num_hit * block_size_;
  cache_hit_blocks_ += num_hit;
  cache_hit_tokens_ += seq.num_computed;
  const int32_t total = blocks_for_tokens(int64_t{seq.num_computed} + num_new_tokens);
  while (static_cast<int32_t>(seq.block_table.size()) < total) seq.block_table.push_back(take_free_block());
}

bool BlockManager::can_append(const Sequence& seq, int32_t num_new_tokens) const {
  const int32_t need =
      blocks_for_tokens(int64_t{seq.num_computed} + num_new_tokens) - static_cast<int32_t>(seq.block_table.size());
  return need <= num_free_blocks();
}

void BlockManager::append_slots(Sequence& seq, int32_t num_new_tokens) {
  MPS_CHECK_MSG(can_append(seq, num_new_tokens), "append_slots without can_append (seq {})", seq.id);
  const int32_t total = blocks_for_tokens(int64_t{seq.num_computed} + num_new_tokens);
  while (static_cast<int32_t>(seq.block_table.size()) < total) seq.block_table.push_back(take_free_block());
}

void BlockManager::on_computed(Sequence& seq) {
  if (!prefix_caching_) return;
  const int32_t full = std::min<int32_t>(seq.num_computed / block_size_, static_cast<int32_t>(seq.block_table.size()));
  for (int32_t i = static_cast<int32_t>(seq.block_hashes.size()); i < full; ++i) {
    std::span<const int32_t> toks(seq.tokens.data() + static_cast<size_t>(i) * block_size_, block_size_);
    const uint64_t key = block_key(i == 0 ? kRootKey : seq.block_hashes[i - 1], toks);
    seq.block_hashes.push_back(key);
    // Another sequence computed the same block first (or a hash collision): keep this copy
    // private; the chain key stays valid for the blocks after it. (One lookup: the map is large
    // and every probe of it a cache miss on the host path between device steps.)
    const int32_t id = seq.block_table[i];
    if (!cached_.insert(key, id)) continue;
    Block& b = blocks_[id];
    MPS_CHECK(!b.cached);
    b.cached = true;
    b.key = key;
    std::copy(toks.begin(), toks.end(), block_tokens(id));
  }
}

void BlockManager::free(Sequence& seq) {
  // Tail blocks first: they are the least likely to be shared, so they get evicted first.
  for (auto it = seq.block_table.rbegin(); it != seq.block_table.rend(); ++it) {
    Block& b = blocks_[*it];
    MPS_CHECK_MSG(b.ref_count > 0, "double free of block {} (seq {})", *it, seq.id);
    if (--b.ref_count == 0) free_list_push(*it, /*front=*/!b.cached);
  }
  seq.block_table.clear();
  ++seq.table_epoch;
  seq.block_hashes.clear();
  seq.num_computed = 0;
}

int32_t BlockManager::take_free_block() {
  MPS_CHECK_MSG(free_head_ >= 0, "out of KV blocks");
  const int32_t id = free_head_;
  free_list_remove(id);
  if (blocks_[id].cached) uncache(id);
  blocks_[id].ref_count = 1;
  return id;
}

void BlockManager::uncache(int32_t id) {
  Block& b = blocks_[id];
  cached_.erase(b.key);
  b.cached = false;
  b.key = 0;
}

void BlockManager::check_invariants(std::span<const Sequence* const> live) const {
  const int32_t n = num_total_blocks();
  std::vector<int32_t> refs(n, 0);
  for (const Sequence* s : live) {
    MPS_CHECK_MSG(static_cast<int32_t>(s->block_table.size()) >= blocks_for_tokens(s->num_computed),
                  "seq {}: {} blocks cannot hold {} computed tokens", s->id, s->block_table.size(), s->num_computed);
    MPS_CHECK_MSG(s->num_computed <= s->num_tokens(), "seq {}: computed {} > tokens {}", s->id, s->num_computed,
                  s->num_tokens());
    if (s->status != SeqStatus::kRunning) {
      MPS_CHECK_MSG(s->block_table.empty() && s->num_computed == 0, "seq {} holds blocks while not running", s->id);
    }
    std::vector<int32_t> sorted = s->block_table;
    std::sort(sorted.begin(), sorted.end());
    MPS_CHECK_MSG(std::adjacent_find(sorted.begin(), sorted.end()) == sorted.end(), "seq {}: block repeated", s->id);
    for (size_t i = 0; i < s->block_table.size(); ++i) {
      const int32_t id = s->block_table[i];
      MPS_CHECK_MSG(id >= 0 && id < n, "seq {}: block id {} out of range", s->id, id);
      ++refs[id];
      const Block& b = blocks_[id];
      if (!b.cached) continue;
      // A cached block is full and never written again: its owner must be past it and
      // agree with its tokens.
      const int64_t end = static_cast<int64_t>(i + 1) * block_size_;
      MPS_CHECK_MSG(end <= s->num_computed, "seq {}: cached block {} at index {} not yet computed ({} computed)",
                    s->id, id, i, s->num_computed);
      MPS_CHECK_MSG(std::equal(block_tokens(id), block_tokens(id) + block_size_, s->tokens.begin() + (end - block_size_)),
                    "seq {}: cached block {} holds other tokens", s->id, id);
    }
  }
  int32_t num_ref0 = 0, num_cached = 0;
  for (int32_t id = 0; id < n; ++id) {
    const Block& b = blocks_[id];
    MPS_CHECK_MSG(b.ref_count == refs[id], "block {}: ref_count {} but {} holders", id, b.ref_count, refs[id]);
    MPS_CHECK_MSG(b.ref_count <= 1 || b.cached, "block {} shared by {} but not a cached full block", id, b.ref_count);
    if (b.ref_count == 0) ++num_ref0;
    if (b.cached) {
      ++num_cached;
      MPS_CHECK_MSG(cached_.find(b.key) == id, "block {}: cached but not in the key map", id);
    }
  }
  MPS_CHECK_MSG(num_ref0 == num_free_blocks(), "{} blocks with ref 0 but free list holds {}", num_ref0,
                num_free_blocks());
  MPS_CHECK_MSG(num_cached == num_cached_blocks(), "{} cached blocks but key map holds {}", num_cached,
                num_cached_blocks());
  std::vector<char> seen(n, 0);
  int32_t walked = 0, prev = -1;
  for (int32_t id = free_head_; id >= 0; prev = id, id = blocks_[id].next) {
    MPS_CHECK_MSG(id < n && !seen[id] && blocks_[id].ref_count == 0, "free list: block {} repeated or in use", id);
    MPS_CHECK_MSG(blocks_[id].prev == prev, "free list: block {} has a stale back link", id);
    seen[id] = 1;
    ++walked;
  }
  MPS_CHECK_MSG(prev == free_tail_ && walked == num_free_, "free list: {} blocks walked, {} counted", walked,
                num_free_);
}

}  // namespace mpserve::engine
