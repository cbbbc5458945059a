// y = x . W^T through cuBLASLt: bf16 operands, f32 accumulate, f32 or bf16 output.
//
// Algorithm choice: cuBLASLt's heuristic by default. For the shapes a caller marks `tune` (the
// decode steps' GEMMs, whose few shapes repeat every step), the first call times the heuristic's
// top candidates on the real operands, each run after evicting the L2 (weights stream from HBM in
// a real step), and keeps the fastest; the choice is then fixed for the process, so a captured
// graph replays what eager ran. MPSERVE_CUDA_GEMM_TUNE=0 keeps the heuristic's first choice
// (bit-identical results across processes; a tuned choice may differ between runs where two
// algorithms time alike, and algorithms differ in summation order).
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
  // `l2_flush` (l2_flush_bytes, at least the L2's size; may be null: no tuning) is scratch the
  // tuner overwrites between timed runs.
  Gemm(void* workspace, size_t workspace_bytes, void* l2_flush = nullptr, size_t l2_flush_bytes = 0);
  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;

  // y (rows, out) = x (rows, in) . w^T, w (out, in) row-major as in torch; with `accumulate`,
  // y += x . w^T instead (beta = 1: cuBLASLt reads y and adds in f32 before its one store, so a
  // residual add needs no kernel of its own). y is f32 when y_f32, else bf16. Pointers 16-byte
  // aligned. Descriptors and the algorithm are cached per (rows, in, out, y type, accumulate), so
  // a captured graph replays exactly what eager ran. `tune`: time the candidates on the first
  // call of this shape (above); ignored while `stream` is capturing. An accumulating shape is
  // timed writing into the tuner's scratch (y is only read), or, where that is too small for
  // (rows, out), not tuned.
  void linear(const __nv_bfloat16* x, const __nv_bfloat16* w, void* y, bool y_f32, int rows, int in, int out,
              cudaStream_t stream, bool tune = false, bool accumulate = false);

  // Whether tuning is on for this process (MPSERVE_CUDA_GEMM_TUNE, default 1).
  static bool tuning_enabled();

  // What the tuner chose for one shape (for logs and tests).
  struct TuneResult {
    int candidates = 0;       // algorithms the heuristic offered that ran
    int chosen = 0;           // index of the fastest in the heuristic's order (0 = its first choice)
    float chosen_us = 0.f;    // median time of the chosen one
    float heuristic_us = 0.f; // median time of the heuristic's first choice
  };
  // The tuner's result for a shape, if it was tuned.
  const TuneResult* tune_result(int rows, int in, int out, bool y_f32, bool accumulate = false) const;

 private:
  struct Plan {
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulAlgo_t algo{};
    TuneResult tune;  // candidates > 0: tuned
  };
  const Plan& plan(const __nv_bfloat16* x, const __nv_bfloat16* w, void* y, int rows, int in, int out, bool y_f32,
                   bool accumulate, cudaStream_t stream, bool tune);
  void tune_plan(Plan& p, const cublasLtMatmulHeuristicResult_t* results, int found, const __nv_bfloat16* x,
                 const __nv_bfloat16* w, const void* c, void* y, float beta, cudaStream_t stream);

  cublasLtHandle_t handle_ = nullptr;
  void* workspace_;
  size_t workspace_bytes_;
  void* l2_flush_;
  size_t l2_flush_bytes_;
  std::map<std::tuple<int, int, int, bool, bool>, Plan> plans_;
};

}  // namespace mpserve::backend::cuda
