#include "backend/cuda/cuda_check.cuh"

#include <cstdio>
#include <cstdlib>

namespace mpserve::backend::cuda {

void cuda_check_failed(const char* stmt, const char* file, int line, const char* message) {
  std::fprintf(stderr, "mpserve: CUDA error: %s at %s:%d: %s\n", stmt, file, line, message);
  std::fflush(stderr);
  std::abort();
}

}  // namespace mpserve::backend::cuda
