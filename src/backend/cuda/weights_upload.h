// Host -> device weight copies, converting f16/f32 tensors to bf16 on the way.
#pragma once

#include <cstdint>
#include <vector>

#include <cuda_bf16.h>

#include "model/tensor.h"

namespace mpserve::backend::cuda {

class WeightUploader {
 public:
  // dst (t.numel()) bf16 <- t (bf16 copied as is; f16/f32 rounded to nearest even).
  void copy(__nv_bfloat16* dst, const model::TensorView& t);
  // As copy(), or n zeros when t is empty (a missing bias).
  void copy_or_zero(__nv_bfloat16* dst, const model::TensorView& t, int64_t n);

 private:
  std::vector<uint16_t> scratch_;
};

}  // namespace mpserve::backend::cuda
