// Test doubles for the engine: a tokenizer with a tiny hand-made vocabulary and a backend whose
// "model" is a hash of the whole token prefix, read back through the paged KV cache so that any
// block-table, position or prefix-sharing mistake changes the output or fails a check.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "backend/backend.h"
#include "engine/engine.h"
#include "model/config.h"
#include "tokenizer/tokenizer.h"

namespace mpserve::engine::testing {

// ids 0,1: specials; 2..27: 'a'..'z'; 28..37: multi-char and punctuation; 38/39: "é" split in
// two ids; 40/41: "€" split in two ids; 42: "é" whole; 43..63: 'A'..'U'.
class FakeTokenizer : public tokenizer::Tokenizer {
 public:
  static constexpr int32_t kVocab = 64;
  static constexpr int32_t kEos = 0;
  static constexpr int32_t kBos = 1;

  FakeTokenizer() {
    pieces_ = {"<|eos|>", "<|bos|>"};
    for (char c = 'a'; c <= 'z'; ++c) pieces_.push_back(std::string(1, c));
    for (const char* p : {" ", ".", "ab", "the", "\n", "xy", "St", "OP", "!", "?"}) pieces_.push_back(p);
    for (const char* p : {"\xC3", "\xA9", "\xE2\x82", "\xAC", "\xC3\xA9"}) pieces_.push_back(p);
    for (char c = 'A'; static_cast<int32_t>(pieces_.size()) < kVocab; ++c) pieces_.push_back(std::string(1, c));
  }
  static int32_t id_of_char(char c) { return c >= 'a' && c <= 'z' ? 2 + (c - 'a') : -1; }

  std::vector<int32_t> encode(std::string_view text) const override {
    std::vector<int32_t> ids;
    size_t i = 0;
    while (i < text.size()) {
      int32_t best = -1;
      size_t best_len = 0;
      for (int32_t id = 2; id < kVocab; ++id) {
        const std::string& p = pieces_[id];
        if (p.size() > best_len && text.substr(i, p.size()) == p) {
          best = id;
          best_len = p.size();
        }
      }
      if (best < 0) {
        ++i;
        continue;
      }
      ids.push_back(best);
      i += best_len;
    }
    return ids;
  }
  std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const override {
    std::string s;
    for (int32_t id : ids) {
      if (skip_special_tokens && is_special(id)) continue;
      s += token_bytes(id);
    }
    return s;
  }
  std::string_view token_bytes(int32_t id) const override {
    return id >= 0 && id < kVocab ? std::string_view(pieces_[id]) : std::string_view();
  }
  int32_t vocab_size() const override { return kVocab; }
  std::optional<int32_t> token_to_id(std::string_view token) const override {
    for (int32_t id = 0; id < kVocab; ++id) {
      if (pieces_[id] == token) return id;
    }
    return std::nullopt;
  }
  bool is_special(int32_t id) const override { return id == kEos || id == kBos; }
  std::optional<int32_t> eos_token_id() const override { return kEos; }
  std::optional<int32_t> bos_token_id() const override { return kBos; }
  std::string chat_template_kind() const override { return "chatml"; }

 private:
  std::vector<std::string> pieces_;
};

inline uint64_t fake_mix(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return x;
}

struct FakeBackendOptions {
  int32_t num_blocks = 64;
  int32_t block_size = 4;
  int32_t vocab = FakeTokenizer::kVocab;
  std::vector<int32_t> eos_token_ids;  // the model config's eos ids
  int32_t max_num_seqs = 1 << 20;      // limits the batch must respect
  int64_t max_num_batched_tokens = 1 << 30;
  int max_steps_in_flight = 2;  // 1: the engine collects step t before it launches t+1
};

// Records, per KV slot, which position and token prefix was written there. On every read the
// sequence's context is walked slot by slot from position 0 and the prefix hash chain is
// recomputed, so a wrong block, a wrong position or a block overwritten while shared fails.
class FakeBackend : public backend::Backend {
 public:
  explicit FakeBackend(FakeBackendOptions o) : o_(std::move(o)), kv_(o_.num_blocks, std::vector<Slot>(o_.block_size)) {
    config_.vocab_size = o_.vocab;
    config_.eos_token_ids = o_.eos_token_ids;
  }

  std::string_view name() const override { return "fake"; }
  const model::ModelConfig& config() const override { return config_; }
  int32_t num_kv_blocks() const override { return o_.num_blocks; }
  int32_t block_size() const override { return o_.block_size; }
  int max_steps_in_flight() const override { return o_.max_steps_in_flight; }

  // Tokens to emit instead of the hash, by request id, indexed by num_generated.
  std::map<int64_t, std::vector<int32_t>> forced;

  struct StepRecord {
    int64_t num_tokens = 0;
    int32_t num_entries = 0;
    std::vector<backend::BatchEntry> entries;  // spans are dangling after the step: use scalars only
  };
  std::vector<StepRecord> steps;
  int64_t tokens_run = 0;
  int errors = 0;

  void step(const backend::Batch& batch, bool want_logits, backend::StepOutput* out) override {
    out->tokens.clear();
    out->logits.clear();
    StepRecord rec;
    rec.num_tokens = batch.num_tokens();
    rec.num_entries = static_cast<int32_t>(batch.entries.size());
    rec.entries = batch.entries;
    steps.push_back(rec);
    tokens_run += rec.num_tokens;
    expect(rec.num_entries > 0, "empty batch");
    expect(rec.num_entries <= o_.max_num_seqs, "batch has more sequences than max_num_seqs");
    expect(rec.num_tokens <= o_.max_num_batched_tokens, "batch has more tokens than max_num_batched_tokens");

    std::set<int64_t> ids;
    std::set<std::pair<int32_t, int32_t>> read_slots;
    std::vector<uint64_t> context_hash(batch.entries.size());
    // Pass 1: read every context from the KV cache as it was before this step.
    for (size_t k = 0; k < batch.entries.size(); ++k) {
      const auto& e = batch.entries[k];
      expect(ids.insert(e.seq_id).second, "sequence twice in one batch");
      expect(!e.tokens.empty(), "entry without tokens");
      const int64_t end = int64_t{e.context_len} + static_cast<int64_t>(e.tokens.size());
      expect(static_cast<int64_t>(e.block_table.size()) == (end + o_.block_size - 1) / o_.block_size,
             "block table does not cover exactly context_len + tokens");
      for (int32_t b : e.block_table) expect(b >= 0 && b < o_.num_blocks, "block id out of range");
      // The table_epoch contract (a backend may keep what it holds of a table): with the epoch of
      // the sequence's last step, the table must extend the one it had then.
      auto [table_it, first_sight] = tables_.try_emplace(e.seq_id);
      TableSeen& seen = table_it->second;
      if (!first_sight && seen.epoch == e.table_epoch) {
        expect(seen.ids.size() <= e.block_table.size() &&
                   std::equal(seen.ids.begin(), seen.ids.end(), e.block_table.begin()),
               "block table rewritten without a new table_epoch");
      }
      seen.epoch = e.table_epoch;
      seen.ids.assign(e.block_table.begin(), e.block_table.end());
      auto& hist = history_[e.seq_id];
      std::vector<int32_t> ctx;
      uint64_t h = kRoot;
      for (int32_t p = 0; p < e.context_len; ++p) {
        const int32_t b = e.block_table[p / o_.block_size], off = p % o_.block_size;
        const Slot& s = kv_[b][off];
        read_slots.insert({b, off});
        if (!expect(s.written && s.pos == p, "context slot not written for this position")) break;
        expect(s.prefix == chain(h, s.token), "KV slot holds another prefix (block reused while shared?)");
        h = s.prefix;
        ctx.push_back(s.token);
      }
      // The context must agree with what this sequence ran before (recompute reruns the same tokens).
      for (size_t p = 0; p < std::min(ctx.size(), hist.size()); ++p) {
        expect(ctx[p] == hist[p], "context token differs from the sequence's history");
      }
      if (static_cast<size_t>(e.context_len) >= hist.size()) hist = ctx;  // first sight (maybe a cache hit)
      for (size_t i = 0; i < e.tokens.size(); ++i) {
        const size_t p = e.context_len + i;
        if (p < hist.size()) expect(hist[p] == e.tokens[i], "recomputed token differs from history");
      }
      if (static_cast<size_t>(e.context_len) == hist.size() && last_sampled_.count(e.seq_id) &&
          hist.size() == sampled_at_len_[e.seq_id]) {
        expect(e.tokens[0] == last_sampled_[e.seq_id], "decode input is not the token sampled last step");
      }
      context_hash[k] = h;
    }
    // Pass 2: write the new tokens' KV; no slot may be written twice or be read by this step.
    std::set<std::pair<int32_t, int32_t>> written;
    for (size_t k = 0; k < batch.entries.size(); ++k) {
      const auto& e = batch.entries[k];
      auto& hist = history_[e.seq_id];
      uint64_t h = context_hash[k];
      for (size_t i = 0; i < e.tokens.size(); ++i) {
        const int32_t p = e.context_len + static_cast<int32_t>(i);
        const int32_t b = e.block_table[p / o_.block_size], off = p % o_.block_size;
        expect(written.insert({b, off}).second, "KV slot written twice in one step");
        expect(!read_slots.count({b, off}), "KV slot written while another sequence reads it");
        h = chain(h, e.tokens[i]);
        kv_[b][off] = Slot{true, p, e.tokens[i], h};
        if (static_cast<size_t>(p) >= hist.size()) hist.resize(p + 1);
        hist[p] = e.tokens[i];
      }
      if (!e.sample) continue;
      int32_t next = pick(h, e);
      auto f = forced.find(e.seq_id);
      if (f != forced.end() && e.num_generated < static_cast<int32_t>(f->second.size())) next = f->second[e.num_generated];
      out->tokens.push_back(next);
      last_sampled_[e.seq_id] = next;
      sampled_at_len_[e.seq_id] = hist.size();
      if (want_logits) {
        std::vector<float> row(o_.vocab, 0.0f);
        row[next] = 1.0f;
        out->logits.insert(out->logits.end(), row.begin(), row.end());
      }
    }
  }

 private:
  struct Slot {
    bool written = false;
    int32_t pos = -1;
    int32_t token = 0;
    uint64_t prefix = 0;
  };
  static constexpr uint64_t kRoot = 12345;
  static uint64_t chain(uint64_t h, int32_t token) { return fake_mix(h * 31 + static_cast<uint64_t>(token) + 7); }

  // A pure function of (prefix, sampling params, num_generated): never of the batch.
  int32_t pick(uint64_t h, const backend::BatchEntry& e) const {
    if (e.sampling.greedy()) return static_cast<int32_t>((h >> 11) % o_.vocab);
    const uint64_t r = fake_mix(h ^ fake_mix(e.sampling.seed + 1) ^ (static_cast<uint64_t>(e.num_generated) << 32));
    return static_cast<int32_t>(r % o_.vocab);
  }

  bool expect(bool ok, const char* what) {
    if (!ok && ++errors <= 10) ADD_FAILURE() << "FakeBackend: " << what;
    return ok;
  }

  FakeBackendOptions o_;
  model::ModelConfig config_;
  std::vector<std::vector<Slot>> kv_;  // [num_blocks][block_size]
  struct TableSeen {
    uint32_t epoch = 0;
    std::vector<int32_t> ids;
  };
  std::unordered_map<int64_t, TableSeen> tables_;
  std::unordered_map<int64_t, std::vector<int32_t>> history_;
  std::unordered_map<int64_t, int32_t> last_sampled_;
  std::unordered_map<int64_t, size_t> sampled_at_len_;
};

// A FakeBackend on a pretend device that takes `device_us` per step: launch() computes the
// step (the default launch(), which also takes tokens the step before sampled) and returns at
// once; the device runs launched steps back to back, and collect() sleeps until the oldest one's
// device time has passed. step() (the synchronous path) sleeps the whole device time. It sleeps
// rather than spins because the host core is free while a real device runs.
class SlowDeviceFakeBackend : public FakeBackend {
 public:
  SlowDeviceFakeBackend(FakeBackendOptions o, std::chrono::microseconds device_us)
      : FakeBackend(std::move(o)), device_us_(device_us) {}
  ~SlowDeviceFakeBackend() override { EXPECT_TRUE(done_.empty()) << "destroyed with a step in flight"; }

  void step(const backend::Batch& batch, bool want_logits, backend::StepOutput* out) override {
    const auto done = std::chrono::steady_clock::now() + device_us_;
    FakeBackend::step(batch, want_logits, out);
    if (!in_launch_) std::this_thread::sleep_until(done);
  }
  void launch(const backend::Batch& batch, bool want_logits) override {
    const auto now = std::chrono::steady_clock::now();
    done_.push_back((done_.empty() || done_.back() < now ? now : done_.back()) + device_us_);
    in_launch_ = true;
    Backend::launch(batch, want_logits);
    in_launch_ = false;
  }
  void collect(backend::StepOutput* out) override {
    ASSERT_FALSE(done_.empty()) << "collect() without a launched step";
    std::this_thread::sleep_until(done_.front());
    done_.erase(done_.begin());
    Backend::collect(out);
  }
  bool launch_is_async() const override { return true; }

 private:
  std::chrono::microseconds device_us_;
  std::vector<std::chrono::steady_clock::time_point> done_;  // launched, not collected: device end times
  bool in_launch_ = false;
};

// An engine over a FakeBackend; `fake` stays valid while `engine` lives. With device_us > 0
// the backend is a SlowDeviceFakeBackend.
struct FakeEngine {
  FakeEngine(EngineOptions opts, FakeBackendOptions bo, std::chrono::microseconds device_us = {}) {
    opts.backend.block_size = bo.block_size;
    bo.max_num_seqs = opts.backend.max_num_seqs;
    bo.max_num_batched_tokens = opts.backend.max_num_batched_tokens;
    std::unique_ptr<FakeBackend> b = device_us.count() > 0 ? std::make_unique<SlowDeviceFakeBackend>(bo, device_us)
                                                           : std::make_unique<FakeBackend>(bo);
    fake = b.get();
    engine = std::make_unique<Engine>(opts, std::move(b), tok);
  }
  FakeTokenizer tok;
  FakeBackend* fake = nullptr;
  std::unique_ptr<Engine> engine;
};

struct Collected {
  std::vector<int32_t> tokens;
  std::string text;
  FinishReason reason = FinishReason::kNone;
  int outputs = 0;
  bool finished = false;
};

// Steps until nothing is left, checking invariants after every step.
inline std::map<uint64_t, Collected> run_all(Engine& engine, int max_steps = 100000) {
  std::map<uint64_t, Collected> got;
  for (int i = 0; i < max_steps && engine.has_unfinished(); ++i) {
    for (const RequestOutput& o : engine.step()) {
      Collected& c = got[o.request_id];
      EXPECT_FALSE(c.finished) << "output after finish for request " << o.request_id;
      c.tokens.insert(c.tokens.end(), o.new_tokens.begin(), o.new_tokens.end());
      c.text += o.new_text;
      c.finished = o.finished;
      c.reason = o.finish_reason;
      ++c.outputs;
    }
    engine.check_invariants();
  }
  EXPECT_FALSE(engine.has_unfinished());
  return got;
}

// The reference: the request alone on a fresh engine with room to spare.
inline Collected run_alone(const GenerationRequest& req, int32_t block_size = 4) {
  EngineOptions opts;
  opts.backend.max_model_len = 4096;
  FakeBackendOptions bo;
  bo.block_size = block_size;
  bo.num_blocks = 1024;
  FakeEngine fe(opts, bo);
  auto id = fe.engine->add_request(req);
  EXPECT_TRUE(id.is_ok()) << id.error();
  auto got = run_all(*fe.engine);
  EXPECT_EQ(fe.fake->errors, 0);
  return got[*id];
}

// Random requests over the fake vocabulary: prompts that often start with one of three shared
// prefixes (prefix-cache hits), 1..24 tokens to generate, greedy or seeded sampling, and some
// that stop early on eos (id 0) or a stop string. With `stop_ids_and_logits` some also stop on a
// token id or keep their logits. Draws from `rng` in a fixed order, so a seed fixes the workload.
inline std::vector<GenerationRequest> random_requests(std::mt19937& rng, int n, bool stop_ids_and_logits) {
  std::vector<std::vector<int32_t>> prefixes(3);
  for (auto& p : prefixes) {
    p.resize(std::uniform_int_distribution<int>(4, 12)(rng));
    for (auto& t : p) t = std::uniform_int_distribution<int>(2, 63)(rng);
  }
  std::vector<GenerationRequest> reqs;
  for (int i = 0; i < n; ++i) {
    GenerationRequest r;
    if (rng() % 2) r.prompt = prefixes[rng() % prefixes.size()];
    const int extra = std::uniform_int_distribution<int>(1, 40)(rng);
    for (int k = 0; k < extra; ++k) r.prompt.push_back(std::uniform_int_distribution<int>(2, 63)(rng));
    r.max_tokens = std::uniform_int_distribution<int>(1, 24)(rng);
    r.sampling.temperature = rng() % 3 == 0 ? 0.0f : 1.0f;
    r.sampling.seed = rng();
    r.ignore_eos = rng() % 4 != 0;
    if (rng() % 5 == 0) r.stop = {"ab", "z."};
    if (stop_ids_and_logits) {
      if (rng() % 6 == 0) r.stop_token_ids = {static_cast<int32_t>(std::uniform_int_distribution<int>(2, 63)(rng))};
      r.want_logits = rng() % 4 == 0;
    }
    reqs.push_back(std::move(r));
  }
  return reqs;
}

inline std::vector<int32_t> letters(std::string_view s) {
  std::vector<int32_t> ids;
  for (char c : s) ids.push_back(FakeTokenizer::id_of_char(c));
  return ids;
}

}  // namespace mpserve::engine::testing
