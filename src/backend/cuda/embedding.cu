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

}  // namespace

void embed_lookup(const __nv_bfloat16* table, const int32_t* ids, float* out, int n, int hidden, int vocab,
                  cudaStream_t stream) {
  CUDA_SHAPE_CHECK(n >= 0 && hidden > 0 && hidden % 2 == 0 && vocab > 0);
  if (n == 0) return;
  const int threads = 256;
  launch_kernel(embed_lookup_kernel, dim3(n), dim3(threads), 0, stream, reinterpret_cast<const __nv_bfloat162*>(table),
                ids, reinterpret_cast<float2*>(out), hidden / 2, vocab);
}

}  // namespace mpserve::backend::cuda
