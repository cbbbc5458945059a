#include <cstdio>
#include <cstdlib>
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
  MPS_CHECK_MSG(!pending_valid_, "{} backend: launch() while a step is still to be collected", name());
  pending_ = StepOutput{};
  step(batch, want_logits, &pending_);
  pending_valid_ = true;
}

void Backend::collect(StepOutput* out) {
  MPS_CHECK_MSG(pending_valid_, "{} backend: collect() without a launched step", name());
  *out = std::move(pending_);
  pending_ = StepOutput{};
  pending_valid_ = false;
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
