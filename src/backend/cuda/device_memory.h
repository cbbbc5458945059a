// Device allocations of one backend, counted so the KV cache can be sized from this process's
// own use (cudaMemGetInfo also sees other processes' memory).
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace mpserve::backend::cuda {

class DeviceMemory {
 public:
  DeviceMemory() = default;
  ~DeviceMemory();
  DeviceMemory(const DeviceMemory&) = delete;
  DeviceMemory& operator=(const DeviceMemory&) = delete;

  // cudaMalloc'd, 256-byte aligned; aborts on failure (sizes are checked against the budget first).
  template <typename T>
  T* alloc(size_t count) {
    return static_cast<T*>(alloc_bytes(count * sizeof(T)));
  }
  void* alloc_bytes(size_t bytes);
  void free(void* p);  // only for a pointer from alloc_bytes
  size_t allocated_bytes() const { return allocated_; }

 private:
  struct Block {
    void* p;
    size_t bytes;
  };
  std::vector<Block> blocks_;
  size_t allocated_ = 0;
};

}  // namespace mpserve::backend::cuda
