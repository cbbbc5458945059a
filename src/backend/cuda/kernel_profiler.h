// Per-kernel device time for bench offline --profile: an event after every kernel (group) of an
// eager step, differences accumulated by name once the step has finished.
#pragma once

#include <map>
#include <string>
#include <vector>

#include <cuda_runtime.h>

#include "backend/backend.h"

namespace mpserve::backend::cuda {

class KernelProfiler {
 public:
  KernelProfiler() = default;
  ~KernelProfiler();
  KernelProfiler(const KernelProfiler&) = delete;
  KernelProfiler& operator=(const KernelProfiler&) = delete;

  // Starts a step; names are reported as "<prefix>/<name>".
  void begin(cudaStream_t stream, const std::string& prefix);
  // Attributes the device time since the previous mark (or begin) to `name`.
  void mark(cudaStream_t stream, const char* name);
  // After the stream has been synchronized: accumulates this step's intervals.
  void end();
  void clear() { totals_.clear(); }
  std::vector<KernelTime> report() const;

 private:
  cudaEvent_t event(size_t i);
  std::vector<cudaEvent_t> events_;
  std::vector<std::string> names_;  // names_[i] ends at events_[i + 1]
  std::string prefix_;
  size_t used_ = 0;
  std::map<std::string, KernelTime> totals_;
};

}  // namespace mpserve::backend::cuda
