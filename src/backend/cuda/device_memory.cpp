#include "backend/cuda/device_memory.h"

#include <algorithm>

#include "backend/cuda/cuda_check.cuh"

namespace mpserve::backend::cuda {

DeviceMemory::~DeviceMemory() {
  for (const Block& b : blocks_) cudaFree(b.p);
}

void* DeviceMemory::alloc_bytes(size_t bytes) {
  bytes = std::max<size_t>(256, (bytes + 255) / 256 * 256);
  void* p = nullptr;
  CUDA_CHECK(cudaMalloc(&p, bytes));
  blocks_.push_back({p, bytes});
  allocated_ += bytes;
  return p;
}

void DeviceMemory::free(void* p) {
  auto it = std::find_if(blocks_.begin(), blocks_.end(), [p](const Block& b) { return b.p == p; });
  if (it == blocks_.end()) return;
  CUDA_CHECK(cudaFree(p));
  allocated_ -= it->bytes;
  blocks_.erase(it);
}

}  // namespace mpserve::backend::cuda
