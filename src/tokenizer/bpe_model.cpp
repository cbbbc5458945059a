// BPE merges by rank over token ids, as HF tokenizers' BPE::merge_word does: repeatedly join the
// adjacent pair with the lowest merge rank, leftmost first on ties.
#include "tokenizer/bpe_model.h"

#include <climits>
#include <mutex>
#include <queue>

#include <nlohmann/json.hpp>

#include "tokenizer/byte_level.h"

namespace mpserve::tokenizer {
namespace {

// Words longer than this are not cached (they are rare and would bloat the cache).
constexpr size_t kMaxCachedWordBytes = 256;
constexpr size_t kMaxCacheEntries = 1 << 16;
// Below this many symbols a quadratic scan beats the heap.
constexpr size_t kHeapThreshold = 24;
// Vocabulary ids above this are rejected rather than allocated for.
constexpr int64_t kMaxTokenId = 1 << 24;

}  // namespace

// --- MergeTable --------------------------------------------------------------------------

void MergeTable::reserve(size_t n) {
  size_t cap = 16;
  while (cap < n * 2) cap <<= 1;  // load factor <= 0.5
  keys_.assign(cap, kEmpty);
  values_.assign(cap, Merge{0, 0});
  mask_ = cap - 1;
  size_ = 0;
}

size_t MergeTable::slot(uint64_t k) const {
  // splitmix64 finalizer: pairs of small ids must spread over the whole table.
  k ^= k >> 30;
  k *= 0xbf58476d1ce4e5b9ULL;
  k ^= k >> 27;
  k *= 0x94d049bb133111ebULL;
  k ^= k >> 31;
  return static_cast<size_t>(k) & mask_;
}

void MergeTable::insert(int32_t left, int32_t right, Merge m) {
  if ((size_ + 1) * 2 > keys_.size()) {
    std::vector<uint64_t> old_keys = std::move(keys_);
    std::vector<Merge> old_values = std::move(values_);
    reserve(old_keys.empty() ? 8 : old_keys.size());
    for (size_t i = 0; i < old_keys.size(); ++i) {
      if (old_keys[i] == kEmpty) continue;
      size_t s = slot(old_keys[i]);
      while (keys_[s] != kEmpty) s = (s + 1) & mask_;
      keys_[s] = old_keys[i];
      values_[s] = old_values[i];
      ++size_;
    }
  }
  const uint64_t k = key(left, right);
  size_t s = slot(k);
  while (keys_[s] != kEmpty) {
    if (keys_[s] == k) {
      values_[s] = m;
      return;
    }
    s = (s + 1) & mask_;
  }
  keys_[s] = k;
  values_[s] = m;
  ++size_;
}

const MergeTable::Merge* MergeTable::find(int32_t left, int32_t right) const {
  if (keys_.empty()) return nullptr;
  const uint64_t k = key(left, right);
  for (size_t s = slot(k);; s = (s + 1) & mask_) {
    if (keys_[s] == k) return &values_[s];
    if (keys_[s] == kEmpty) return nullptr;
  }
}

// --- BpeModel ----------------------------------------------------------------------------

BpeModel::BpeModel(BpeModel&& other) noexcept
    : vocab_(std::move(other.vocab_)),
      tokens_(std::move(other.tokens_)),
      merges_(std::move(other.merges_)),
      byte_ids_(other.byte_ids_),
      ignore_merges_(other.ignore_merges_) {}

Result<BpeModel> BpeModel::from_json(const nlohmann::json& model) {
  if (!model.is_object()) return Status::error("\"model\" is missing or not an object");
  if (const auto t = model.find("type"); t != model.end() && *t != "BPE") {
    return Status::errorf("unsupported model type {} (only BPE)", t->dump());
  }
  for (const char* field : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    const auto f = model.find(field);
    if (f != model.end() && !f->is_null() && *f != "") return Status::errorf("model.{} is not supported", field);
  }
  if (model.value("byte_fallback", false)) return Status::error("model.byte_fallback is not supported");

  BpeModel m;
  m.ignore_merges_ = model.value("ignore_merges", false);
  const auto vocab = model.find("vocab");
  if (vocab == model.end() || !vocab->is_object()) return Status::error("model.vocab is missing or not an object");
  m.vocab_.reserve(vocab->size());
  int64_t max_id = -1;
  for (const auto& [token, id] : vocab->items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > kMaxTokenId) {
      return Status::errorf("model.vocab[{}] has invalid id {}", nlohmann::json(token).dump(), id.dump());
    }
    const auto i = id.get<int64_t>();
    m.vocab_.emplace(token, static_cast<int32_t>(i));
    max_id = std::max(max_id, i);
  }
  m.tokens_.resize(static_cast<size_t>(max_id + 1));
  for (const auto& [token, id] : m.vocab_) m.tokens_[id] = token;

  for (int b = 0; b < 256; ++b) {
    const auto it = m.vocab_.find(byte_to_utf8(static_cast<uint8_t>(b)));
    m.byte_ids_[b] = it == m.vocab_.end() ? -1 : it->second;
  }

  const auto merges = model.find("merges");
  if (merges == model.end() || !merges->is_array()) return Status::error("model.merges is missing or not an array");
  m.merges_.reserve(merges->size());
  std::string left, right, joined;
  int32_t rank = 0;
  for (const auto& entry : *merges) {
    // Two spellings: "left right" (older files) and ["left", "right"] (newer ones).
    if (entry.is_string()) {
      const std::string& s = entry.get_ref<const std::string&>();
      const size_t sp = s.find(' ');
      if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos) {
        return Status::errorf("model.merges[{}] = {} is not two tokens", rank, entry.dump());
      }
      left.assign(s, 0, sp);
      right.assign(s, sp + 1);
    } else if (entry.is_array() && entry.size() == 2 && entry[0].is_string() && entry[1].is_string()) {
      left = entry[0].get_ref<const std::string&>();
      right = entry[1].get_ref<const std::string&>();
    } else {
      return Status::errorf("model.merges[{}] = {} is not two tokens", rank, entry.dump());
    }
    joined = left + right;
    const auto l = m.vocab_.find(left), r = m.vocab_.find(right), j = m.vocab_.find(joined);
    if (l == m.vocab_.end() || r == m.vocab_.end() || j == m.vocab_.end()) {
      const std::string& missing = l == m.vocab_.end() ? left : r == m.vocab_.end() ? right : joined;
      return Status::errorf("model.merges[{}] = {} uses token {} that is not in model.vocab", rank, entry.dump(),
                            nlohmann::json(missing).dump());
    }
    m.merges_.insert(l->second, r->second, MergeTable::Merge{rank, j->second});
    ++rank;
  }
  return m;
}

void BpeModel::merge(std::vector<int32_t>* syms) const {
  std::vector<int32_t>& s = *syms;
  if (s.size() < kHeapThreshold) {
    while (s.size() >= 2) {
      int32_t best_rank = INT32_MAX;
      size_t best = 0;
      int32_t merged = -1;
      for (size_t i = 0; i + 1 < s.size(); ++i) {
        const MergeTable::Merge* m = merges_.find(s[i], s[i + 1]);
        if (m != nullptr && m->rank < best_rank) {
          best_rank = m->rank;
          best = i;
          merged = m->merged;
        }
      }
      if (merged < 0) break;
      s[best] = merged;
      s.erase(s.begin() + static_cast<ptrdiff_t>(best) + 1);
    }
    return;
  }

  // Doubly linked symbols and a min-heap of candidate merges keyed by (rank, position).
  const int n = static_cast<int>(s.size());
  std::vector<int> prev(n), next(n);
  for (int i = 0; i < n; ++i) {
    prev[i] = i - 1;
    next[i] = i + 1 < n ? i + 1 : -1;
  }
  struct Candidate {
    int32_t rank;
    int pos;
    int32_t merged;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> heap;
  const auto push_pair = [&](int pos) {
    if (pos < 0 || next[pos] < 0) return;
    if (const MergeTable::Merge* m = merges_.find(s[pos], s[next[pos]])) heap.push({m->rank, pos, m->merged});
  };
  for (int i = 0; i + 1 < n; ++i) push_pair(i);
  std::vector<bool> dead(n, false);
  while (!heap.empty()) {
    const Candidate c = heap.top();
    heap.pop();
    // Stale entries: the left symbol was absorbed, or either side changed since the push.
    if (dead[c.pos] || next[c.pos] < 0) continue;
    const MergeTable::Merge* m = merges_.find(s[c.pos], s[next[c.pos]]);
    if (m == nullptr || m->rank != c.rank || m->merged != c.merged) continue;
    const int right = next[c.pos];
    s[c.pos] = c.merged;
    dead[right] = true;
    next[c.pos] = next[right];
    if (next[right] >= 0) prev[next[right]] = c.pos;
    push_pair(prev[c.pos]);
    push_pair(c.pos);
  }
  size_t out = 0;
  for (int i = 0; i >= 0; i = next[i]) s[out++] = s[i];
  s.resize(out);
}

void BpeModel::encode_word(std::string_view word, std::vector<int32_t>* ids) const {
  if (word.empty()) return;
  if (word.size() == 1) {
    const int32_t id = byte_ids_[static_cast<uint8_t>(word[0])];
    if (id >= 0) ids->push_back(id);
    return;
  }
  const bool cacheable = word.size() <= kMaxCachedWordBytes;
  if (cacheable) {
    std::shared_lock lock(cache_mu_);
    const auto it = cache_.find(word);
    if (it != cache_.end()) {
      ids->insert(ids->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> syms;
  bool whole = false;
  if (ignore_merges_) {
    // HF: a word that is itself a token is emitted as is, without merging.
    const auto it = vocab_.find(bytes_to_byte_level(word));
    if (it != vocab_.end()) {
      syms.push_back(it->second);
      whole = true;
    }
  }
  if (!whole) {
    syms.reserve(word.size());
    for (char c : word) {
      const int32_t id = byte_ids_[static_cast<uint8_t>(c)];
      if (id >= 0) syms.push_back(id);
    }
    merge(&syms);
  }
  ids->insert(ids->end(), syms.begin(), syms.end());
  if (cacheable) {
    std::unique_lock lock(cache_mu_);
    if (cache_.size() >= kMaxCacheEntries) cache_.clear();
    cache_.emplace(std::string(word), std::move(syms));
  }
}

}  // namespace mpserve::tokenizer
