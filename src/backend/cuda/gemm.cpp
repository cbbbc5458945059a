#include "backend/cuda/gemm.h"

#include "backend/cuda/cuda_check.cuh"

namespace mpserve::backend::cuda {

Gemm::Gemm(void* workspace, size_t workspace_bytes) : workspace_(workspace), workspace_bytes_(workspace_bytes) {
  CUBLAS_CHECK(cublasLtCreate(&handle_));
}

Gemm::~Gemm() {
  for (auto& [key, p] : plans_) {
    cublasLtMatrixLayoutDestroy(p.a);
    cublasLtMatrixLayoutDestroy(p.b);
    cublasLtMatrixLayoutDestroy(p.c);
    cublasLtMatmulDescDestroy(p.op);
  }
  cublasLtDestroy(handle_);
}

// note: cuBLASLt is column-major. Row-major W (out, in) is column-major (in, out): A = W with
// op T gives (out, in); row-major x (rows, in) is column-major (in, rows) = B; the column-major
// result (out, rows) is row-major y (rows, out). So m = out, n = rows, k = in.
const Gemm::Plan& Gemm::plan(int rows, int in, int out, bool y_f32) {
  const auto key = std::make_tuple(rows, in, out, y_f32);
  auto it = plans_.find(key);
  if (it != plans_.end()) return it->second;
  Plan p;
  CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.a, CUDA_R_16BF, in, out, in));
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.b, CUDA_R_16BF, in, rows, in));
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.c, y_f32 ? CUDA_R_32F : CUDA_R_16BF, out, rows, out));
  cublasLtMatmulPreference_t pref = nullptr;
  CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace_bytes_,
                                                    sizeof workspace_bytes_));
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(handle_, p.op, p.a, p.b, p.c, p.c, pref, 1, &result, &found));
  cublasLtMatmulPreferenceDestroy(pref);
  if (found == 0) cuda_check_failed("cublasLtMatmulAlgoGetHeuristic", __FILE__, __LINE__, "no algorithm");
  p.algo = result.algo;
  return plans_.emplace(key, p).first->second;
}

void Gemm::linear(const __nv_bfloat16* x, const __nv_bfloat16* w, void* y, bool y_f32, int rows, int in, int out,
                  cudaStream_t stream) {
  CUDA_SHAPE_CHECK(rows >= 0 && in > 0 && out > 0 && in % 8 == 0 && out % 8 == 0);
  if (rows == 0) return;
  const Plan& p = plan(rows, in, out, y_f32);
  const float alpha = 1.f, beta = 0.f;
  CUBLAS_CHECK(cublasLtMatmul(handle_, p.op, &alpha, w, p.a, x, p.b, &beta, y, p.c, y, p.c, &p.algo, workspace_,
                              workspace_bytes_, stream));
}

}  // namespace mpserve::backend::cuda
