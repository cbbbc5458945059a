#include <cstdio>
#include <cstdlib>
#include <optional>

// The backend factory and the option parsers shared by the CLI and the engine.
#include "backend/backend.h"

#include "backend/cpu/cpu_backend.h"
#include "common/check.h"
#ifdef MPSERVE_HAVE_CUDA
#include "backend/cuda/cuda_backend.h"
#endif

namespace mpserve::backend {

Result<Device> parse_device(std::string_view s) {
  if (s == "cpu") return Device::kCpu;
  if (s == "cuda") return Device::kCuda;
  return Status::errorf("unknown device '{}' (choices: cpu, cuda)", s);
}

Result<Ablation> parse_ablation(std::string_view s) {
  if (s == "none") return Ablation::kNone;
  if (s == "attention") return Ablation::kNoAttention;
  if (s == "mlp") return Ablation::kNoMlp;
  return Status::errorf("unknown ablation '{}' (choices: none, attention, mlp)", s);
}

std::string_view ablation_name(Ablation a) {
  switch (a) {
    case Ablation::kNone:
      return "none";
    case Ablation::kNoAttention:
      return "attention";
    case Ablation::kNoMlp:
      return "mlp";
  }
  return "none";
}

void Backend::launch(const Batch& batch, bool want_logits) {
  MPS_CHECK_MSG(static_cast<int>(pending_.size()) < max_steps_in_flight(),
                "{} backend: launch() with {} steps still to be collected", name(), pending_.size());
  // Entries that take a token the previous launch sampled: that launch already ran, so the token
  // is known here; they run with a copy of the batch whose spans point at it.
  std::vector<int32_t> prev_tokens;
  std::optional<Batch> resolved;
  for (size_t i = 0; i < batch.entries.size(); ++i) {
    const BatchEntry& e = batch.entries[i];
    if (e.prev_sample_row < 0) continue;
    MPS_CHECK_MSG(e.tokens.size() == 1 && static_cast<size_t>(e.prev_sample_row) < last_sampled_.size(),
                  "{} backend: sequence {} takes row {} of a previous step that sampled {}", name(), e.seq_id,
                  e.prev_sample_row, last_sampled_.size());
    if (!resolved) {
      resolved = batch;
      prev_tokens.assign(batch.entries.size(), 0);
    }
    prev_tokens[i] = last_sampled_[static_cast<size_t>(e.prev_sample_row)];
    resolved->entries[i].tokens = std::span<const int32_t>(&prev_tokens[i], 1);
    resolved->entries[i].prev_sample_row = -1;
  }
  StepOutput out;
  step(resolved ? *resolved : batch, want_logits, &out);
  last_sampled_ = out.tokens;
  pending_.push_back(std::move(out));
}

void Backend::collect(StepOutput* out) {
  MPS_CHECK_MSG(!pending_.empty(), "{} backend: collect() without a launched step", name());
  *out = std::move(pending_.front());
  pending_.erase(pending_.begin());
}

bool cuda_compiled() {
#ifdef MPSERVE_HAVE_CUDA
  return true;
#else
  return false;
#endif
}

Result<std::unique_ptr<Backend>> make_backend(const model::ModelWeights& weights, const BackendOptions& opts) {
  switch (opts.device) {
    case Device::kCpu:
      return cpu::make_cpu_backend(weights, opts);
    case Device::kCuda:
#ifdef MPSERVE_HAVE_CUDA
      return cuda::make_cuda_backend(weights, opts);
#else
      return Status::error(
          "this mpserve was built without CUDA (nvcc was not found when it was configured); rebuild on a machine "
          "with the CUDA toolkit or use --device cpu");
#endif
  }
  return Status::error("unknown device");
}

void Backend::debug_inject_fault() {
  std::fprintf(stderr, "mpserve: injected fault (--debug-fault-after-requests): aborting\n");
  std::fflush(stderr);
  std::abort();
}

}  // namespace mpserve::backend
