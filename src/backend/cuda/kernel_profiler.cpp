#include "backend/cuda/kernel_profiler.h"

#include "backend/cuda/cuda_check.cuh"

namespace mpserve::backend::cuda {

KernelProfiler::~KernelProfiler() {
  for (cudaEvent_t e : events_) cudaEventDestroy(e);
}

cudaEvent_t KernelProfiler::event(size_t i) {
  while (events_.size() <= i) {
    cudaEvent_t e = nullptr;
    CUDA_CHECK(cudaEventCreate(&e));
    events_.push_back(e);
  }
  return events_[i];
}

void KernelProfiler::begin(cudaStream_t stream, const std::string& prefix) {
  prefix_ = prefix;
  names_.clear();
  used_ = 1;
  CUDA_CHECK(cudaEventRecord(event(0), stream));
}

void KernelProfiler::mark(cudaStream_t stream, const char* name) {
  if (used_ == 0) return;  // not inside begin/end
  CUDA_CHECK(cudaEventRecord(event(used_), stream));
  names_.emplace_back(name);
  ++used_;
}

void KernelProfiler::end() {
  if (used_ == 0) return;
  for (size_t i = 0; i + 1 < used_; ++i) {
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, events_[i], events_[i + 1]));
    KernelTime& t = totals_[prefix_ + "/" + names_[i]];
    t.name = prefix_ + "/" + names_[i];
    t.calls += 1;
    t.total_us += double(ms) * 1e3;
  }
  used_ = 0;
}

std::vector<KernelTime> KernelProfiler::report() const {
  std::vector<KernelTime> out;
  for (const auto& [name, t] : totals_) out.push_back(t);
  return out;
}

}  // namespace mpserve::backend::cuda
