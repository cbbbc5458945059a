// The CUDA backend (--device cuda). Included by backend.cpp, compiled by the host compiler: no
// CUDA headers here.
#pragma once

#include <memory>

#include "backend/backend.h"

namespace mpserve::backend::cuda {

// Uploads the weights as bf16, sizes the KV cache from gpu_memory_fraction (see the note in
// cuda_backend.cpp), and warms up. Errors: no usable GPU, unsupported shapes, no room for one
// max_model_len sequence. `weights` must outlive the backend.
Result<std::unique_ptr<Backend>> make_cuda_backend(const model::ModelWeights& weights, const BackendOptions& opts);

}  // namespace mpserve::backend::cuda
