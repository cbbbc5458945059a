// Error checks and small helpers shared by every file of the CUDA backend. Included by .cu files
// (nvcc) and by the host .cpp files (g++), so it names no fmt or other host-only header.
#pragma once

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace mpserve::backend::cuda {
// Prints "CUDA error: <statement> at file:line: <message>" and aborts (a device fault is a broken
// invariant, STYLE.md). Defined in cuda_check.cpp.
[[noreturn]] void cuda_check_failed(const char* stmt, const char* file, int line, const char* message);
// "CUBLAS_STATUS_..." for a status code (cuBLASLt alone has no such function).
const char* cublas_status_name(int status);
}  // namespace mpserve::backend::cuda

// One macro for every CUDA runtime call.
#define CUDA_CHECK(stmt)                                                                                   \
  do {                                                                                                     \
    cudaError_t mps_cuda_err_ = (stmt);                                                                    \
    if (mps_cuda_err_ != cudaSuccess)                                                                      \
      ::mpserve::backend::cuda::cuda_check_failed(#stmt, __FILE__, __LINE__, cudaGetErrorString(mps_cuda_err_)); \
  } while (0)

// The same for cuBLAS / cuBLASLt status codes.
#define CUBLAS_CHECK(stmt)                                                                                      \
  do {                                                                                                          \
    cublasStatus_t mps_cublas_st_ = (stmt);                                                                     \
    if (mps_cublas_st_ != CUBLAS_STATUS_SUCCESS)                                                                \
      ::mpserve::backend::cuda::cuda_check_failed(#stmt, __FILE__, __LINE__, ::mpserve::backend::cuda::cublas_status_name(mps_cublas_st_)); \
  } while (0)

// Launcher shape checks: a wrong shape is a caller bug.
#define CUDA_SHAPE_CHECK(cond)                                                                  \
  do {                                                                                          \
    if (!(cond)) ::mpserve::backend::cuda::cuda_check_failed(#cond, __FILE__, __LINE__, "bad shape"); \
  } while (0)

// After every launch.
#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())

#define CEIL_DIV(a, b) (((a) + (b)-1) / (b))
