#include "backend/cuda/fault.cuh"

#include <cstdint>

namespace mpserve::backend::cuda {
namespace {

__global__ void illegal_address_write_kernel(int* p) { p[threadIdx.x * 4096] = 1; }

}  // namespace

void launch_illegal_address_write(cudaStream_t stream) {
  // note: a high canonical address that no allocation maps, so the write always faults.
  auto* bad = reinterpret_cast<int*>(uintptr_t{0x7ff0deadbeef0000});
  illegal_address_write_kernel<<<1, 32, 0, stream>>>(bad);
}

}  // namespace mpserve::backend::cuda
