#include "backend/cuda/weights_upload.h"

#include <cstring>

#include "backend/cuda/cuda_check.cuh"
#include "common/half.h"

namespace mpserve::backend::cuda {

void WeightUploader::copy(__nv_bfloat16* dst, const model::TensorView& t) {
  const size_t n = static_cast<size_t>(t.numel());
  if (t.dtype == model::DType::kBF16) {
    CUDA_CHECK(cudaMemcpy(dst, t.data, n * sizeof(uint16_t), cudaMemcpyHostToDevice));
    return;
  }
  scratch_.resize(n);
  if (t.dtype == model::DType::kF16) {
    const uint16_t* src = static_cast<const uint16_t*>(t.data);
    for (size_t i = 0; i < n; ++i) scratch_[i] = f32_to_bf16(f16_to_f32(src[i]));
  } else {
    const float* src = static_cast<const float*>(t.data);
    for (size_t i = 0; i < n; ++i) scratch_[i] = f32_to_bf16(src[i]);
  }
  CUDA_CHECK(cudaMemcpy(dst, scratch_.data(), n * sizeof(uint16_t), cudaMemcpyHostToDevice));
}

void WeightUploader::copy_or_zero(__nv_bfloat16* dst, const model::TensorView& t, int64_t n) {
  if (!t.empty()) {
    copy(dst, t);
    return;
  }
  CUDA_CHECK(cudaMemset(dst, 0, static_cast<size_t>(n) * sizeof(uint16_t)));
}

}  // namespace mpserve::backend::cuda
