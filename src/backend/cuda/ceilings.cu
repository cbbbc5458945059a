#include <algorithm>
#include <vector>

#include "backend/cuda/ceilings.cuh"
#include "backend/cuda/cuda_check.cuh"

namespace mpserve::backend::cuda {
namespace {

// Uniform in [-1, 1) from a hash of the index: never zeros (they run faster than real data).
__global__ void fill_random_kernel(__nv_bfloat16* p, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    uint32_t h = static_cast<uint32_t>(i) * 0x9E3779B1u ^ seed;
    h ^= h >> 16, h *= 0x85EBCA6Bu, h ^= h >> 13, h *= 0xC2B2AE35u, h ^= h >> 16;
    p[i] = __float2bfloat16_rn(static_cast<float>(h >> 8) * (2.0f / 16777216.0f) - 1.0f);
  }
}

template <typename F>
double median_ms(cudaStream_t stream, int warmup, int reps, F&& body) {
  cudaEvent_t a, b;
  CUDA_CHECK(cudaEventCreate(&a));
  CUDA_CHECK(cudaEventCreate(&b));
  for (int i = 0; i < warmup; ++i) body();
  std::vector<float> ms;
  for (int i = 0; i < reps; ++i) {
    CUDA_CHECK(cudaEventRecord(a, stream));
    body();
    CUDA_CHECK(cudaEventRecord(b, stream));
    CUDA_CHECK(cudaEventSynchronize(b));
    float t = 0;
    CUDA_CHECK(cudaEventElapsedTime(&t, a, b));
    ms.push_back(t);
  }
  CUDA_CHECK(cudaEventDestroy(a));
  CUDA_CHECK(cudaEventDestroy(b));
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

}  // namespace

double measure_copy_gb_s(cudaStream_t stream) {
  const size_t bytes = size_t{1} << 30;
  void *src = nullptr, *dst = nullptr;
  if (cudaMalloc(&src, bytes) != cudaSuccess) return (void)cudaGetLastError(), -1.0;
  if (cudaMalloc(&dst, bytes) != cudaSuccess) {
    (void)cudaGetLastError();
    cudaFree(src);
    return -1.0;
  }
  fill_random_kernel<<<1024, 256, 0, stream>>>(static_cast<__nv_bfloat16*>(src), bytes / 2, 1u);
  CUDA_CHECK_LAUNCH();
  const double ms = median_ms(stream, 2, 10, [&] {
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream));
  });
  CUDA_CHECK(cudaStreamSynchronize(stream));
  cudaFree(src);
  cudaFree(dst);
  return 2.0 * double(bytes) / (ms * 1e-3) / 1e9;
}

double measure_gemm_tflops(Gemm& gemm, cudaStream_t stream) {
  const int n = 8192;
  const size_t elems = size_t(n) * size_t(n);
  __nv_bfloat16* buf = nullptr;
  if (cudaMalloc(&buf, 3 * elems * sizeof(__nv_bfloat16)) != cudaSuccess) return (void)cudaGetLastError(), -1.0;
  __nv_bfloat16 *x = buf, *w = buf + elems, *y = buf + 2 * elems;
  fill_random_kernel<<<1024, 256, 0, stream>>>(x, 2 * elems, 7u);
  CUDA_CHECK_LAUNCH();
  const double ms = median_ms(stream, 3, 10, [&] { gemm.linear(x, w, y, false, n, n, n, stream); });
  CUDA_CHECK(cudaStreamSynchronize(stream));
  cudaFree(buf);
  return 2.0 * double(n) * double(n) * double(n) / (ms * 1e-3) / 1e12;
}

}  // namespace mpserve::backend::cuda
