#include "backend/cuda/gemm.h"

#include <algorithm>
#include <vector>

#include "backend/cuda/cuda_check.cuh"
#include "common/env.h"
#include "common/log.h"

namespace mpserve::backend::cuda {

namespace {
constexpr int kTuneCandidates = 16;  // heuristic results requested
constexpr int kTuneRuns = 5;         // timed runs per candidate (median)
}  // namespace

Gemm::Gemm(void* workspace, size_t workspace_bytes, void* l2_flush, size_t l2_flush_bytes)
    : workspace_(workspace), workspace_bytes_(workspace_bytes), l2_flush_(l2_flush), l2_flush_bytes_(l2_flush_bytes) {
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

bool Gemm::tuning_enabled() {
  static const bool enabled = env::get_string(env::kCudaGemmTune, "1") != "0";
  return enabled;
}

const Gemm::TuneResult* Gemm::tune_result(int rows, int in, int out, bool y_f32, bool accumulate) const {
  const auto it = plans_.find(std::make_tuple(rows, in, out, y_f32, accumulate));
  return it != plans_.end() && it->second.tune.candidates > 0 ? &it->second.tune : nullptr;
}

// note: cuBLASLt is column-major. Row-major W (out, in) is column-major (in, out): A = W with
// op T gives (out, in); row-major x (rows, in) is column-major (in, rows) = B; the column-major
// result (out, rows) is row-major y (rows, out). So m = out, n = rows, k = in.
const Gemm::Plan& Gemm::plan(const __nv_bfloat16* x, const __nv_bfloat16* w, void* y, int rows, int in, int out,
                             bool y_f32, bool accumulate, cudaStream_t stream, bool tune) {
  const auto key = std::make_tuple(rows, in, out, y_f32, accumulate);
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
  cublasLtMatmulHeuristicResult_t results[kTuneCandidates] = {};
  int found = 0;
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  // An accumulating call's timed runs write into l2_flush_ (y, read as C, stays as it was).
  const size_t y_bytes = size_t(rows) * size_t(out) * (y_f32 ? 4 : 2);
  const bool wanted = tune && tuning_enabled() && l2_flush_ != nullptr && (!accumulate || y_bytes <= l2_flush_bytes_);
  if (wanted) CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
  const bool timed = wanted && capture == cudaStreamCaptureStatusNone;
  CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(handle_, p.op, p.a, p.b, p.c, p.c, pref, timed ? kTuneCandidates : 1,
                                              results, &found));
  cublasLtMatmulPreferenceDestroy(pref);
  if (found == 0) cuda_check_failed("cublasLtMatmulAlgoGetHeuristic", __FILE__, __LINE__, "no algorithm");
  p.algo = results[0].algo;
  if (timed && found > 1) {
    // An accumulating shape reads y as C and writes its timed runs into the scratch.
    tune_plan(p, results, found, x, w, /*c=*/y, /*y=*/accumulate ? l2_flush_ : y, accumulate ? 1.f : 0.f, stream);
    log::debug("gemm: rows={} in={} out={} {}{}: tuned {} candidates, chose #{} {:.1f} us (heuristic's first "
               "{:.1f} us)",
               rows, in, out, y_f32 ? "f32" : "bf16", accumulate ? " +=" : "", p.tune.candidates, p.tune.chosen,
               p.tune.chosen_us, p.tune.heuristic_us);
  }
  return plans_.emplace(key, p).first->second;
}

// Times every candidate kTuneRuns times, interleaved (run r of every candidate, then run r + 1),
// each run after overwriting l2_flush_ so the weights come from HBM as in a real step; keeps the
// lowest median. Candidates that fail to launch are skipped. Each run computes y = x . w^T +
// beta * c; `y` is overwritten (the caller's call right after computes it again), or is l2_flush_
// itself (accumulating calls: the memset comes before the run, so the run's output is kept
// only until the next one's flush).
void Gemm::tune_plan(Plan& p, const cublasLtMatmulHeuristicResult_t* results, int found, const __nv_bfloat16* x,
                     const __nv_bfloat16* w, const void* c, void* y, float beta, cudaStream_t stream) {
  cudaEvent_t start = nullptr, stop = nullptr;
  CUDA_CHECK(cudaEventCreate(&start));
  CUDA_CHECK(cudaEventCreate(&stop));
  const float alpha = 1.f;
  std::vector<std::vector<float>> times(static_cast<size_t>(found));
  std::vector<bool> ok(static_cast<size_t>(found), true);
  for (int r = 0; r <= kTuneRuns; ++r) {  // run 0 warms up (module load, first-touch) and is not kept
    for (int i = 0; i < found; ++i) {
      if (!ok[size_t(i)] || results[i].state != CUBLAS_STATUS_SUCCESS) {
        ok[size_t(i)] = false;
        continue;
      }
      CUDA_CHECK(cudaMemsetAsync(l2_flush_, r & 1, l2_flush_bytes_, stream));
      CUDA_CHECK(cudaEventRecord(start, stream));
      const cublasStatus_t st = cublasLtMatmul(handle_, p.op, &alpha, w, p.a, x, p.b, &beta, c, p.c, y, p.c,
                                               &results[i].algo, workspace_, workspace_bytes_, stream);
      CUDA_CHECK(cudaEventRecord(stop, stream));
      CUDA_CHECK(cudaEventSynchronize(stop));
      if (st != CUBLAS_STATUS_SUCCESS) {
        ok[size_t(i)] = false;
        continue;
      }
      float ms = 0.f;
      CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
      if (r > 0) times[size_t(i)].push_back(ms * 1000.f);
    }
  }
  CUDA_CHECK(cudaEventDestroy(start));
  CUDA_CHECK(cudaEventDestroy(stop));
  int best = -1;
  float best_us = 0.f;
  for (int i = 0; i < found; ++i) {
    auto& t = times[size_t(i)];
    if (!ok[size_t(i)] || t.empty()) continue;
    std::nth_element(t.begin(), t.begin() + t.size() / 2, t.end());
    const float med = t[t.size() / 2];
    ++p.tune.candidates;
    if (i == 0) p.tune.heuristic_us = med;
    if (best < 0 || med < best_us) best = i, best_us = med;
  }
  if (best < 0) return;  // nothing ran: keep the heuristic's first choice
  p.algo = results[best].algo;
  p.tune.chosen = best;
  p.tune.chosen_us = best_us;
}

void Gemm::linear(const __nv_bfloat16* x, const __nv_bfloat16* w, void* y, bool y_f32, int rows, int in, int out,
                  cudaStream_t stream, bool tune, bool accumulate) {
  CUDA_SHAPE_CHECK(rows >= 0 && in > 0 && out > 0 && in % 8 == 0 && out % 8 == 0);
  if (rows == 0) return;
  const Plan& p = plan(x, w, y, rows, in, out, y_f32, accumulate, stream, tune);
  const float alpha = 1.f, beta = accumulate ? 1.f : 0.f;
  CUBLAS_CHECK(cublasLtMatmul(handle_, p.op, &alpha, w, p.a, x, p.b, &beta, y, p.c, y, p.c, &p.algo, workspace_,
                              workspace_bytes_, stream));
}

}  // namespace mpserve::backend::cuda
