// Flags shared by every subcommand that runs an engine (generate, engine, bench offline).
#pragma once

#include <filesystem>
#include <memory>
#include <string>

#include <CLI/CLI.hpp>

#include "common/status.h"
#include "engine/engine.h"
#include "model/weights.h"
#include "tokenizer/tokenizer.h"

namespace mpserve::cli {

struct EngineFlags {
  std::string model_dir;  // empty = the embedded default model
  std::string device = "cpu";
  std::string ablate = "none";
  int max_num_seqs = 64;
  int max_num_batched_tokens = 2048;
  int max_model_len = 4096;
  int block_size = 16;
  int threads = 0;
  int64_t kv_cache_mb = 0;
  double gpu_memory_fraction = 0.9;
  int gpu = 0;
  bool no_cuda_graphs = false;
  bool no_prefix_caching = false;
  bool no_chunked_prefill = false;
  int64_t step_cpu_us = 0;
  bool async_scheduling = false;
  int64_t debug_fault_after_requests = -1;
  int max_waiting = 4096;
};

void add_engine_flags(CLI::App* cmd, EngineFlags* f);

// A model, its tokenizer and an engine over the chosen backend, built from flags.
struct LoadedEngine {
  std::filesystem::path model_dir;
  std::unique_ptr<model::ModelWeights> weights;
  std::unique_ptr<tokenizer::Tokenizer> tokenizer;
  std::unique_ptr<engine::Engine> engine;
};

Result<std::filesystem::path> resolve_model_dir(const std::string& flag);
Result<LoadedEngine> load_engine(const EngineFlags& f);

}  // namespace mpserve::cli
