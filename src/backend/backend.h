// The Backend interface: run one scheduled batch through the model, return the next tokens.
// The engine owns scheduling and the KV block table; a backend owns the KV memory and compute.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "backend/sampling.h"
#include "common/status.h"
#include "model/weights.h"

namespace mpserve::backend {

enum class Device { kCpu, kCuda };

// Study knob: skip one half of every decoder layer (residual passes through unchanged).
enum class Ablation {
  kNone,
  kNoAttention,  // --ablate attention: run only the MLP blocks
  kNoMlp,        // --ablate mlp: run only the attention blocks
};

Result<Device> parse_device(std::string_view s);
Result<Ablation> parse_ablation(std::string_view s);  // "none" | "attention" | "mlp"
std::string_view ablation_name(Ablation a);

struct BackendOptions {
  Device device = Device::kCpu;
  int block_size = 16;                // tokens per KV-cache block
  int max_num_seqs = 256;             // largest number of sequences in one batch
  int max_num_batched_tokens = 2048;  // largest number of tokens in one batch
  int max_model_len = 4096;           // longest sequence (prompt + output)
  Ablation ablation = Ablation::kNone;
  // CPU
  int num_threads = 0;               // 0 = all cores
  int64_t cpu_kv_cache_bytes = 0;    // 0 = enough for max_num_seqs * max_model_len, capped at 2 GiB
  // CUDA
  int gpu_index = 0;
  double gpu_memory_fraction = 0.9;  // of total device memory this process may use (weights+KV+workspace)
  bool cuda_graphs = true;
};

// One sequence's part of a step: run `tokens` at positions [context_len, context_len + n).
struct BatchEntry {
  int64_t seq_id = 0;
  int32_t context_len = 0;                // tokens of this sequence already in the KV cache
  std::span<const int32_t> tokens;        // new tokens to run this step
  std::span<const int32_t> block_table;   // KV block ids covering context_len + tokens.size() tokens
  bool sample = false;                    // sample the token after the last new one
  SamplingParams sampling;
  int32_t num_generated = 0;              // tokens generated so far; the sampling RNG counter
};

struct Batch {
  std::vector<BatchEntry> entries;
  int64_t num_tokens() const {
    int64_t n = 0;
    for (const auto& e : entries) n += static_cast<int64_t>(e.tokens.size());
    return n;
  }
};

struct StepOutput {
  // One token per entry with sample=true, in entry order.
  std::vector<int32_t> tokens;
  // When requested: [num_sampled, vocab] f32 logits of the sampled positions, entry order.
  std::vector<float> logits;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string_view name() const = 0;
  virtual const model::ModelConfig& config() const = 0;
  // KV-cache capacity, fixed at construction.
  virtual int32_t num_kv_blocks() const = 0;
  virtual int32_t block_size() const = 0;
  // Runs one step. Must not fail for a batch the scheduler built within the options' limits.
  virtual void step(const Batch& batch, bool want_logits, StepOutput* out) = 0;
};

// Creates the backend for opts.device. CUDA in a build without it, or without a usable GPU,
// is a clear error. `weights` must outlive the backend.
Result<std::unique_ptr<Backend>> make_backend(const model::ModelWeights& weights, const BackendOptions& opts);

// True when this binary was built with the CUDA backend.
bool cuda_compiled();

}  // namespace mpserve::backend
