// y = x . W^T through cuBLASLt: bf16 operands, f32 accumulate, f32 or bf16 output.
#pragma once

#include <cstddef>
#include <map>
#include <tuple>

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace mpserve::backend::cuda {

class Gemm {
 public:
  // `workspace` (workspace_bytes of device memory) is owned by the caller and outlives this.
  Gemm(void* workspace, size_t workspace_bytes);
  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;

  // y (rows, out) = x (rows, in) . w^T, w (out, in) row-major as in torch. y is f32 when
  // y_f32, else bf16. Pointers 16-byte aligned. Descriptors and the heuristic's algorithm are
  // cached per (rows, in, out, y type), so a captured graph replays exactly what eager ran.
  void linear(const __nv_bfloat16* x, const __nv_bfloat16* w, void* y, bool y_f32, int rows, int in, int out,
              cudaStream_t stream);

 private:
  struct Plan {
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulAlgo_t algo{};
  };
  const Plan& plan(int rows, int in, int out, bool y_f32);

  cublasLtHandle_t handle_ = nullptr;
  void* workspace_;
  size_t workspace_bytes_;
  std::map<std::tuple<int, int, int, bool>, Plan> plans_;
};

}  // namespace mpserve::backend::cuda
