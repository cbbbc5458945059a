#include "backend/cuda/cuda_check.cuh"
#include "backend/cuda/pdl.cuh"

#include <cstdio>
#include <cstdlib>

#include "common/env.h"

namespace mpserve::backend::cuda {

void cuda_check_failed(const char* stmt, const char* file, int line, const char* message) {
  std::fprintf(stderr, "mpserve: CUDA error: %s at %s:%d: %s\n", stmt, file, line, message);
  std::fflush(stderr);
  std::abort();
}

bool pdl_enabled() {
  static const bool enabled = env::get_string(env::kCudaPdl, "1") != "0";
  return enabled;
}

bool prefer_shared_enabled() {
  static const bool enabled = env::get_string(env::kCudaPreferShared, "1") != "0";
  return enabled;
}

const char* cublas_status_name(int status) {
  switch (status) {
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    default: return "CUBLAS_STATUS_(unknown)";
  }
}

}  // namespace mpserve::backend::cuda
