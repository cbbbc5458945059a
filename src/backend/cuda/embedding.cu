#include "backend/cuda/cuda_check.cuh"
#include "backend/cuda/embedding.cuh"
#include "backend/cuda/pdl.cuh"

namespace mpserve::backend::cuda {
namespace {

__global__ void embed_lookup_kernel(const __nv_bfloat162* table, const int32_t* ids, float2* out, int half_hidden,
                                    int vocab) {
  pdl_wait();  // `out` (the residual) is read by the kernels of the step before
  pdl_trigger();
  const int row = blockIdx.x;
  const int id = ids[row];
  float2* dst = out + static_cast<int64_t>(row) * half_hidden;
  if (id < 0 || id >= vocab) {
    for (int i = threadIdx.x; i < half_hidden; i += blockDim.x) dst[i] = make_float2(__int_as_float(0x7fc00000), 0.f);
    return;
  }
  const __nv_bfloat162* src = table + static_cast<int64_t>(id) * half_hidden;
  for (int i = threadIdx.x; i < half_hidden; i += blockDim.x) dst[i] = __bfloat1622float2(src[i]);
}

__global__ void gather_prev_tokens_kernel(int32_t* ids, const int32_t* pairs, const int32_t* prev, int n) {
  pdl_wait();  // `prev` is the sampler's output of the step before; `ids` its input copy
  pdl_trigger();
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
    ids[pairs[2 * i]] = prev[pairs[2 * i + 1]];
}

}  // namespace

void gather_prev_tokens(int32_t* ids, const int32_t* pairs, const int32_t* prev, int n, cudaStream_t stream) {
  CUDA_SHAPE_CHECK(n >= 0);
  if (n == 0) return;
  launch_kernel(gather_prev_tokens_kernel, dim3(CEIL_DIV(n, 256)), dim3(256), 0, stream, ids, pairs, prev, n);
}

void embed_lookup(const __nv_bfloat16* table, const int32_t* ids, float* out, int n, int hidden, int vocab,
                  cudaStream_t stream) {
  CUDA_SHAPE_CHECK(n >= 0 && hidden > 0 && hidden % 2 == 0 && vocab > 0);
  if (n == 0) return;
  const int threads = 256;
  launch_kernel(embed_lookup_kernel, dim3(n), dim3(threads), 0, stream, reinterpret_cast<const __nv_bfloat162*>(table),
                ids, reinterpret_cast<float2*>(out), hidden / 2, vocab);
}

}  // namespace mpserve::backend::cuda
