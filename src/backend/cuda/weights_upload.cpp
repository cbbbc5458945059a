#include "backend/cuda/weights_upload.h"

#include <cstring>

#include "backend/cuda/cuda_check.cuh"
#include "backend/cuda/qkv_rope.cuh"
#include "common/check.h"
#include "common/half.h"

namespace mpserve::backend::cuda {

const uint16_t* WeightUploader::as_bf16(const model::TensorView& t) {
  const size_t n = static_cast<size_t>(t.numel());
  if (t.dtype == model::DType::kBF16) return static_cast<const uint16_t*>(t.data);
  scratch_.resize(n);
  if (t.dtype == model::DType::kF16) {
    const uint16_t* src = static_cast<const uint16_t*>(t.data);
    for (size_t i = 0; i < n; ++i) scratch_[i] = f32_to_bf16(f16_to_f32(src[i]));
  } else {
    const float* src = static_cast<const float*>(t.data);
    for (size_t i = 0; i < n; ++i) scratch_[i] = f32_to_bf16(src[i]);
  }
  return scratch_.data();
}

void WeightUploader::copy(__nv_bfloat16* dst, const model::TensorView& t, int64_t rope_head_dim) {
  const size_t n = static_cast<size_t>(t.numel());
  const uint16_t* src = as_bf16(t);
  if (rope_head_dim > 0) {
    const int64_t rows = t.dim(0);
    MPS_CHECK_MSG(rope_head_dim % 2 == 0 && rows % rope_head_dim == 0, "{} {}: rows not whole heads of {}", t.name,
                  t.shape_string(), rope_head_dim);
    const size_t row_len = n / static_cast<size_t>(rows);
    reordered_.resize(n);
    for (int64_t r = 0; r < rows; ++r) {
      std::memcpy(reordered_.data() + size_t(r) * row_len,
                  src + size_t(rope_pair_source(r, rope_head_dim)) * row_len, row_len * sizeof(uint16_t));
    }
    src = reordered_.data();
  }
  CUDA_CHECK(cudaMemcpy(dst, src, n * sizeof(uint16_t), cudaMemcpyHostToDevice));
}

void WeightUploader::copy_or_zero(__nv_bfloat16* dst, const model::TensorView& t, int64_t n, int64_t rope_head_dim) {
  if (!t.empty()) {
    copy(dst, t, rope_head_dim);
    return;
  }
  CUDA_CHECK(cudaMemset(dst, 0, static_cast<size_t>(n) * sizeof(uint16_t)));
}

}  // namespace mpserve::backend::cuda
