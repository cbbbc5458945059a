// The CPU reference backend against Hugging Face transformers (golden files from
// tools/gpu/golden_hf.py, run on the GPU machine on models made by `mpserve make-model`).
//
// Tolerance: the golden logits come from transformers computing in float32 on the same bf16
// weights, which is the function the CPU backend computes (f32 arithmetic). The two differ only
// in summation order, so we require |ours - hf| <= 1e-3 * (1 + |hf|) at every recorded logit,
// and additionally that our error is at least 20x smaller than the error of transformers' own
// bf16 forward pass on the same model (recorded in the golden file) — i.e. well inside bf16
// tolerance. Greedy tokens must match wherever HF's top-2 margin exceeds 1e-3.
//
// Each golden file holds a checksum of the weights it was recorded on; a test whose model no longer
// matches (make-model's initialisation changed) fails on that alone, naming the re-record command.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <numeric>
#include <optional>

#include <nlohmann/json.hpp>

#include <fmt/format.h>

#include "backend/backend.h"
#include "common/env.h"
#include "common/half.h"
#include "model/model_writer.h"
#include "model/safetensors.h"
#include "model/weights.h"
#include "tokenizer/tokenizer.h"

namespace mpserve {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

fs::path source_dir() {
  auto s = env::get("MPSERVE_SOURCE_DIR");
  return s ? fs::path(*s) : fs::path(MPSERVE_TEST_SOURCE_DIR);
}

fs::path cache_dir() {
  auto s = env::get(env::kCacheDir);
  return s ? fs::path(*s) : fs::temp_directory_path() / "mpserve-test-cache";
}

json load_golden(const std::string& file) {
  std::ifstream in(source_dir() / "tests" / "data" / file);
  EXPECT_TRUE(in.good()) << "missing golden file " << file;
  return json::parse(in);
}

// Makes (once) the model the golden file was recorded on: shape NAME, seed 0.
fs::path model_for(const std::string& shape) {
  // The cache name carries a hash of the shape's config and make-model's weights version, so a
  // changed shape or initialisation never reuses a stale copy, and tests running in parallel never
  // delete a directory another one is reading.
  auto want = model::shape_config(shape);
  EXPECT_TRUE(want.is_ok()) << want.error();
  const size_t h = std::hash<std::string>{}(model::model_config_to_json(*want));
  fs::path dir = cache_dir() / fmt::format("golden-{}-{:016x}-{}", shape, h, model::kWeightsVersion);
  if (fs::exists(dir / "model.safetensors")) return dir;
  fs::create_directories(cache_dir());
  model::MakeModelOptions o;
  o.shape = shape;
  o.seed = 0;
  fs::path tmp = cache_dir() / ("golden-" + shape + ".tmp." + std::to_string(::getpid()));
  o.out_dir = tmp;
  auto src = model::find_tokenizer_source_dir();
  EXPECT_TRUE(src.is_ok()) << src.error();
  o.tokenizer_source_dir = *src;
  Status st = model::make_model(o);
  EXPECT_TRUE(st.is_ok()) << st.message();
  std::error_code ec;
  fs::rename(tmp, dir, ec);
  if (ec) fs::remove_all(tmp);  // another process won the race; its copy is identical
  return dir;
}

struct Stats {
  double max_err = 0;       // max |ours - hf| / (1 + |hf|)
  double max_abs = 0;       // max |ours - hf|
  double max_bf16_abs = 0;  // max |hf_bf16 - hf| (what bf16 compute alone does)
  int argmax_checked = 0;
};

int argmax(const float* row, int64_t n) { return static_cast<int>(std::max_element(row, row + n) - row); }

// Compares one row of our logits [vocab] with a recorded position; `where` names it in failures.
void compare_row(const json& pos, const std::vector<int>& indices, const float* row, int64_t vocab,
                 const std::string& where, Stats* s) {
  const auto& sub = pos["sub_logits"];
  const auto& sub16 = pos["bf16_sub_logits"];
  for (size_t i = 0; i < indices.size(); ++i) {
    double hf = sub[i].get<double>();
    double d = std::fabs(row[indices[i]] - hf);
    s->max_abs = std::max(s->max_abs, d);
    s->max_err = std::max(s->max_err, d / (1.0 + std::fabs(hf)));
    s->max_bf16_abs = std::max(s->max_bf16_abs, std::fabs(sub16[i].get<double>() - hf));
  }
  const auto& top_ids = pos["top_ids"];
  const auto& top_logits = pos["top_logits"];
  for (size_t k = 0; k < top_ids.size(); ++k) {
    double hf = top_logits[k].get<double>();
    double d = std::fabs(row[top_ids[k].get<int>()] - hf);
    s->max_abs = std::max(s->max_abs, d);
    s->max_err = std::max(s->max_err, d / (1.0 + std::fabs(hf)));
  }
  // Greedy must agree wherever HF's top-2 margin is clear of float noise.
  if (top_logits[0].get<double>() - top_logits[1].get<double>() > 1e-3) {
    EXPECT_EQ(argmax(row, vocab), top_ids[0].get<int>()) << where;
    ++s->argmax_checked;
  }
}

// As tools/gpu/golden_hf.py's weights_checksum: per tensor, sum_i x_i * (1 + i % 1009) in double,
// with sum_i |x_i| * (1 + i % 1009) as the scale its rounding error is relative to.
struct Checksum {
  double value = 0, scale = 0;
};
std::map<std::string, Checksum> weights_checksum(const fs::path& dir) {
  std::map<std::string, Checksum> out;
  auto store = model::TensorStore::open_dir(dir);
  EXPECT_TRUE(store.is_ok()) << store.error();
  if (!store.is_ok()) return out;
  for (const std::string& name : (*store)->names()) {
    auto t = (*store)->tensor(name);
    EXPECT_TRUE(t.is_ok() && t->dtype == model::DType::kBF16) << name;
    if (!t.is_ok() || t->dtype != model::DType::kBF16) continue;
    const auto* p = static_cast<const uint16_t*>(t->data);
    // note: Neumaier-compensated, so the sum is exact to ~1e-16 of `scale` however long the
    // tensor; torch's cascaded float64 sum is within ~1e-14, so 1e-13 of the scale tells one
    // changed bf16 value in a tensor apart from summation order.
    Checksum c;
    double comp = 0;
    for (int64_t i = 0; i < t->numel(); ++i) {
      const double x = bf16_to_f32(p[i]) * double(1 + i % 1009);
      const double sum = c.value + x;
      comp += std::fabs(c.value) >= std::fabs(x) ? (c.value - sum) + x : (x - sum) + c.value;
      c.value = sum, c.scale += std::fabs(x);
    }
    c.value += comp;
    out[name] = c;
  }
  return out;
}

// True when `golden` was recorded on the weights of `dir`; otherwise fails the test once, saying
// what differs and how to re-record.
bool golden_matches_model(const json& golden, const std::string& file, const fs::path& dir) {
  const std::string rerecord = fmt::format(
      "{} was recorded on other weights than make-model now writes for '{}' (seed 0): re-record it on the GPU "
      "machine (docs/results/golden_logits.md, \"Regenerate\": tools/gpu/pack.sh <build>, then "
      "GOLDEN_SPECS={}:{}:0 OUT=... bash tools/gpu/golden.sh with gpu-pack carried) and copy $OUT/{} to tests/data/",
      file, golden["name"].get<std::string>(), golden["name"].get<std::string>(), golden["name"].get<std::string>(),
      file);
  if (!golden.contains("weights_checksum")) {
    ADD_FAILURE() << rerecord << " (the file has no weights_checksum: it predates them)";
    return false;
  }
  const std::map<std::string, Checksum> ours = weights_checksum(dir);
  std::string diffs;
  for (const auto& [name, c] : ours) {
    const auto it = golden["weights_checksum"].find(name);
    if (it == golden["weights_checksum"].end()) {
      diffs += fmt::format("\n  {}: not in the golden file", name);
    } else if (std::fabs(it->get<double>() - c.value) > 1e-13 * (1 + c.scale)) {
      diffs += fmt::format("\n  {}: golden {:.17g}, ours {:.17g}", name, it->get<double>(), c.value);
    }
  }
  if (golden["weights_checksum"].size() != ours.size()) {
    diffs += fmt::format("\n  {} tensors in the golden file, {} in ours", golden["weights_checksum"].size(), ours.size());
  }
  if (!diffs.empty()) ADD_FAILURE() << rerecord << ". Weights that differ:" << diffs;
  return diffs.empty();
}

// Runs every case through the CPU backend: prefill in chunks of `chunk` tokens (all cases in the
// same steps, i.e. batched), then decode the HF-generated tokens one step at a time (teacher
// forcing), comparing logits at every recorded position.
// Empty when the golden file does not belong to the model (failed, with the re-record command).
std::optional<Stats> run_golden(const std::string& file, const std::string& shape, int chunk) {
  json g = load_golden(file);
  fs::path dir = model_for(shape);
  if (!golden_matches_model(g, file, dir)) return std::nullopt;
  auto weights = model::load_model(dir);
  EXPECT_TRUE(weights.is_ok()) << weights.error();
  auto tok = tokenizer::Tokenizer::load(dir);
  EXPECT_TRUE(tok.is_ok()) << tok.error();
  backend::BackendOptions bo;
  bo.max_model_len = 256;
  bo.max_num_seqs = 8;
  bo.max_num_batched_tokens = 512;
  auto be = backend::make_backend(**weights, bo);
  EXPECT_TRUE(be.is_ok()) << be.error();
  backend::Backend& b = **be;
  const int64_t vocab = (*weights)->config.vocab_size;
  const int bs = b.block_size();
  std::vector<int> indices = g["vocab_indices"].get<std::vector<int>>();

  const auto& cases = g["cases"];
  const size_t n = cases.size();
  std::vector<std::vector<int32_t>> tokens(n), tables(n);
  std::vector<size_t> prompt_len(n);
  for (size_t c = 0; c < n; ++c) {
    auto prompt_ids = cases[c]["prompt_ids"].get<std::vector<int32_t>>();
    EXPECT_EQ((*tok)->encode(cases[c]["prompt"].get<std::string>()), prompt_ids)
        << "our tokenizer disagrees with HF on: " << cases[c]["prompt"];
    prompt_len[c] = prompt_ids.size();
    tokens[c] = prompt_ids;
    for (int32_t t : cases[c]["generated_ids"].get<std::vector<int32_t>>()) tokens[c].push_back(t);
    int32_t blocks = static_cast<int32_t>((tokens[c].size() + bs - 1) / bs);
    // Interleave the cases' blocks so tables are non-contiguous.
    for (int32_t k = 0; k < blocks; ++k) tables[c].push_back(static_cast<int32_t>(k * n + c));
  }
  EXPECT_LE(static_cast<int64_t>(tables[0].size() * n), b.num_kv_blocks());

  Stats s;
  std::vector<size_t> done(n, 0);
  backend::StepOutput out;
  // Prefill, chunked, all cases in each step.
  for (bool more = true; more;) {
    more = false;
    backend::Batch batch;
    std::vector<size_t> which;
    for (size_t c = 0; c < n; ++c) {
      if (done[c] >= prompt_len[c]) continue;
      size_t take = std::min<size_t>(chunk, prompt_len[c] - done[c]);
      backend::BatchEntry e;
      e.seq_id = static_cast<int64_t>(c);
      e.context_len = static_cast<int32_t>(done[c]);
      e.tokens = std::span<const int32_t>(tokens[c].data() + done[c], take);
      e.block_table = tables[c];
      e.sample = done[c] + take == prompt_len[c];
      e.sampling.temperature = 0;
      batch.entries.push_back(e);
      if (e.sample) which.push_back(c);
      done[c] += take;
      more = more || done[c] < prompt_len[c];
    }
    b.step(batch, true, &out);
    EXPECT_EQ(out.logits.size(), which.size() * static_cast<size_t>(vocab));
    for (size_t k = 0; k < which.size(); ++k) {
      const json& pos = cases[which[k]]["positions"][0];
      const float* row = out.logits.data() + k * vocab;
      compare_row(pos, indices, row, vocab, "case " + std::to_string(which[k]) + " prefill", &s);
    }
  }
  // Decode: one token per case per step, batched.
  const size_t steps = cases[0]["generated_ids"].size();
  for (size_t t = 0; t < steps; ++t) {
    backend::Batch batch;
    for (size_t c = 0; c < n; ++c) {
      backend::BatchEntry e;
      e.seq_id = static_cast<int64_t>(c);
      e.context_len = static_cast<int32_t>(prompt_len[c] + t);
      e.tokens = std::span<const int32_t>(tokens[c].data() + prompt_len[c] + t, 1);
      e.block_table = tables[c];
      e.sample = true;
      e.sampling.temperature = 0;
      e.num_generated = static_cast<int32_t>(t + 1);
      batch.entries.push_back(e);
    }
    b.step(batch, true, &out);
    for (size_t c = 0; c < n; ++c) {
      const json& pos = cases[c]["positions"][t + 1];
      const float* row = out.logits.data() + c * vocab;
      compare_row(pos, indices, row, vocab, "case " + std::to_string(c) + " decode step " + std::to_string(t), &s);
    }
  }
  return s;
}

void expect_within_tolerance(const std::optional<Stats>& stats, const std::string& what) {
  if (!stats) return;
  const Stats& s = *stats;
  std::printf("golden %s: max_abs_err=%.3g max_rel_err=%.3g hf_bf16_max_abs_err=%.3g argmax_checked=%d\n",
              what.c_str(), s.max_abs, s.max_err, s.max_bf16_abs, s.argmax_checked);
  EXPECT_LE(s.max_err, 1e-3) << what;
  EXPECT_LE(s.max_abs * 20, s.max_bf16_abs) << what << ": not well inside bf16 tolerance";
  EXPECT_GT(s.argmax_checked, 0);
}

TEST(GoldenLogits, cpu_backend_matches_transformers_on_tiny) {
  expect_within_tolerance(run_golden("golden_tiny.json", "tiny", 1 << 20), "tiny one-shot prefill");
}

TEST(GoldenLogits, cpu_backend_matches_transformers_on_tiny_with_chunked_prefill) {
  expect_within_tolerance(run_golden("golden_tiny.json", "tiny", 5), "tiny chunked prefill");
}

TEST(GoldenLogits, cpu_backend_matches_transformers_on_qwen2_5_0_5b_shape) {
  expect_within_tolerance(run_golden("golden_qwen2_5-0_5b.json", "qwen2.5-0.5b", 7), "qwen2.5-0.5b chunked prefill");
}

}  // namespace
}  // namespace mpserve
