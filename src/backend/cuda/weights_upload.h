// Host -> device weight copies, converting f16/f32 tensors to bf16 on the way.
#pragma once

#include <cstdint>
#include <vector>

#include <cuda_bf16.h>

#include "model/tensor.h"

namespace mpserve::backend::cuda {

class WeightUploader {
 public:
  // dst (t.numel()) bf16 <- t (bf16 copied as is; f16/f32 rounded to nearest even). rope_head_dim
  // > 0: the t.dim(0) rows of t (matrix rows, or the elements of a bias) go in the RoPE pair
  // layout of qkv_rope.cuh, within each head of rope_head_dim rows.
  void copy(__nv_bfloat16* dst, const model::TensorView& t, int64_t rope_head_dim = 0);
  // As copy(), or n zeros when t is empty (a missing bias).
  void copy_or_zero(__nv_bfloat16* dst, const model::TensorView& t, int64_t n, int64_t rope_head_dim = 0);

 private:
  // t's elements as bf16: t.data itself, or converted into scratch_.
  const uint16_t* as_bf16(const model::TensorView& t);

  std::vector<uint16_t> scratch_;
  std::vector<uint16_t> reordered_;
};

}  // namespace mpserve::backend::cuda
