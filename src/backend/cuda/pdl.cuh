// Programmatic dependent launch (PDL, sm_90): a kernel launched with launch_kernel(..., pdl=true)
// may start while the kernel before it on the stream is still running, so its prologue (launch,
// index math, loads of weights that no earlier kernel writes) overlaps the previous kernel's tail.
//
// Contract for every kernel launched through launch_kernel():
//   - it calls pdl_wait() before its first read of anything an earlier kernel wrote, and before
//     its first global write; every thread of every block reaches pdl_wait() (a kernel that returns
//     early calls it first), so the kernel's completion implies its predecessors' completion and
//     the dependency chain stays transitive;
//   - it may call pdl_trigger() at any point to let the next kernel start launching; without it
//     the next kernel launches as the blocks of this one exit.
// pdl_wait() waits for the whole previous grid to finish and its writes to be visible; it is a
// no-op when the kernel was launched without the attribute (and on graphs replaying such edges it
// is what keeps the order). Launches captured into a CUDA graph keep the programmatic edges.
//
// MPSERVE_CUDA_PDL=0 turns the attribute off (for A/B runs); the device-side calls are then no-ops.
#pragma once

#include <cuda_runtime.h>

#include <utility>

#include "backend/cuda/cuda_check.cuh"

namespace mpserve::backend::cuda {

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Whether launches use the PDL attribute (MPSERVE_CUDA_PDL, default on; read once). Defined in
// cuda_check.cpp.
bool pdl_enabled();

// Whether launches that ask for it prefer the largest shared-memory carveout (MPSERVE_CUDA_PREFER_SHARED,
// default on; read once). Defined in cuda_check.cpp.
bool prefer_shared_enabled();

// How a launch runs besides grid, block and shared memory.
struct LaunchOptions {
  const dim3* cluster = nullptr;  // thread-block clusters of this shape (sm_90; grid a multiple of it)
  // The launch prefers the largest shared memory in the SM's L1 / shared-memory split: for kernels
  // whose neighbours in the step use most of the shared memory (cuBLASLt GEMMs, the tensor-core
  // linears), so the SM keeps one split across them; it changes the split only when drained. Off
  // (the driver's choice) with MPSERVE_CUDA_PREFER_SHARED=0.
  bool max_shared = false;
};

namespace detail {
// cudaLaunchKernelEx with the PDL attribute (when enabled) and the options' attributes.
template <typename... Params, typename... Args>
void launch_kernel_ex(void (*kernel)(Params...), dim3 grid, dim3 block, const LaunchOptions& opt, size_t smem,
                      cudaStream_t stream, Args&&... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[3];
  unsigned n = 0;
  if (const dim3* cluster = opt.cluster) {
    attr[n].id = cudaLaunchAttributeClusterDimension;
    attr[n].val.clusterDim.x = cluster->x;
    attr[n].val.clusterDim.y = cluster->y;
    attr[n].val.clusterDim.z = cluster->z;
    ++n;
  }
  if (pdl_enabled()) {
    attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[n].val.programmaticStreamSerializationAllowed = 1;
    ++n;
  }
  if (opt.max_shared && prefer_shared_enabled()) {
    attr[n].id = cudaLaunchAttributePreferredSharedMemoryCarveout;
    attr[n].val.sharedMemCarveout = cudaSharedmemCarveoutMaxShared;
    ++n;
  }
  cfg.attrs = attr;
  cfg.numAttrs = n;
  CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, static_cast<Params>(std::forward<Args>(args))...));
}
}  // namespace detail

// Launches kernel<<<grid, block, smem, stream>>>(args...), with the programmatic-serialization
// attribute when PDL is enabled, and checks the launch.
template <typename... Params, typename... Args>
void launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                   Args&&... args) {
  detail::launch_kernel_ex(kernel, grid, block, LaunchOptions{}, smem, stream, std::forward<Args>(args)...);
}

// As launch_kernel, with options (clusters, the shared-memory split).
template <typename... Params, typename... Args>
void launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, const LaunchOptions& opt, size_t smem,
                   cudaStream_t stream, Args&&... args) {
  detail::launch_kernel_ex(kernel, grid, block, opt, smem, stream, std::forward<Args>(args)...);
}

}  // namespace mpserve::backend::cuda
