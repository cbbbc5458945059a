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
  // Changes whenever the sequence's table may have been rewritten; between changes the table only
  // grows, so a backend may keep what it already holds of it (same seq_id and epoch).
  uint32_t table_epoch = 0;
  bool sample = false;                    // sample the token after the last new one
  // >= 0: this entry's one new token is the one the previous launch() sampled in that row (its
  // index among that step's sampling entries), not yet collected; `tokens` holds a placeholder.
  // Only with two steps in flight (max_steps_in_flight() == 2), on an entry with one token.
  int32_t prev_sample_row = -1;
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

// Host-side timing of the last launched step, for benchmarks (bench offline).
// note: wait_us belongs to the most recent collect(), which under async scheduling is the step
// before the launched one (the engine collects step t, then launches t + 1): the time the engine
// blocked on the device during its last step(), so step wall time minus wait_us is the host work
// of that step() in both modes (with async scheduling, part of it overlapped the device).
struct StepTimings {
  bool valid = false;        // false: the backend does not time its steps
  bool decode_only = false;  // every entry ran one token and sampled
  bool graph = false;        // replayed a captured CUDA graph
  int32_t num_tokens = 0;
  int32_t num_seqs = 0;
  double host_us = 0;        // inside launch() + collect() but not blocked on the device (packing, launches)
  double enqueue_us = 0;     // of host_us: the CUDA calls that enqueue the step (input copy, graph or kernel launches)
  double wait_us = 0;        // the last collect() blocked on the device
};

// The card's two ceilings, measured by the backend on its own device.
struct DeviceCeilings {
  std::string device_name;
  std::string driver;        // CUDA version the driver supports, e.g. "13.0" (nvidia-smi has its own number)
  std::string runtime;       // CUDA runtime version, e.g. "13.0"
  double copy_gb_s = 0;      // device-to-device copy of a large buffer, (bytes read + written) / time
  double bf16_tflops = 0;    // a large bf16 GEMM (f32 accumulate) through the backend's GEMM library
};

// Accumulated device time of one kernel (group) while kernel profiling is on.
struct KernelTime {
  std::string name;          // "decode/attention", "prefill/gemm_qkv", ...
  int64_t calls = 0;
  double total_us = 0;
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

  // Async scheduling (--async-scheduling): launch() starts a step and returns once everything it
  // needs from `batch` is copied (the spans may change right after); collect() waits for the
  // oldest launched step and fills `out`. Up to max_steps_in_flight() steps may be launched and
  // not yet collected; with two, the second may take tokens the first samples on the device
  // (BatchEntry::prev_sample_row), so the engine can launch step t+1 before it collects step t.
  // launch() + collect() computes exactly what step() does with the tokens filled in. The
  // defaults run the whole step inside launch() (no overlap, same result), so every backend
  // supports the mode and only a device backend makes it pay.
  virtual void launch(const Batch& batch, bool want_logits);
  virtual void collect(StepOutput* out);
  virtual int max_steps_in_flight() const { return 2; }
  // True when launch() returns before the device finishes (the engine reports it; tests use it).
  virtual bool launch_is_async() const { return false; }

  // Benchmark hooks (additive; the defaults say "not supported"). They are const because the
  // engine hands out only a const Backend: none of them changes what step() computes.
  virtual StepTimings last_step_timings() const { return {}; }
  // Test builds of the supervisor's recovery path: make this process fail the way a faulting
  // GPU client does (CUDA: a kernel writes to an illegal address, which under MPS takes down
  // every client of the server; CPU: the process aborts). Does not return normally.
  [[noreturn]] virtual void debug_inject_fault();
  // Allocates and frees its own scratch buffers; needs ~2.5 GiB free on a GPU.
  virtual Result<DeviceCeilings> measure_ceilings() const {
    return Status::errorf("{} backend: device ceilings not supported", name());
  }
  // While on, steps run eagerly (no graphs) with a timer around every kernel; slower, so a
  // benchmark profiles in a pass of its own. Returns false when not supported.
  virtual bool set_kernel_profiling(bool /*on*/) const { return false; }
  virtual std::vector<KernelTime> kernel_profile() const { return {}; }

 private:
  // The default launch()/collect(): the finished steps waiting to be collected, oldest first
  // (at most two), and the tokens the last launch() sampled (for prev_sample_row).
  std::vector<StepOutput> pending_;
  std::vector<int32_t> last_sampled_;
};

// Creates the backend for opts.device. CUDA in a build without it, or without a usable GPU,
// is a clear error. `weights` must outlive the backend.
Result<std::unique_ptr<Backend>> make_backend(const model::ModelWeights& weights, const BackendOptions& opts);

// True when this binary was built with the CUDA backend.
bool cuda_compiled();

}  // namespace mpserve::backend
