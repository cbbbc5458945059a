// The CPU backend: the reference implementation of the model forward pass (f32 arithmetic,
// paged f32 KV cache), composed from the operations in ops.h.
#pragma once

#include <memory>

#include "backend/backend.h"

namespace mpserve::backend::cpu {

// Errors: unsupported shapes, or a cpu_kv_cache_bytes too small for one max_model_len sequence.
// `weights` must outlive the backend.
Result<std::unique_ptr<Backend>> make_cpu_backend(const model::ModelWeights& weights, const BackendOptions& opts);

}  // namespace mpserve::backend::cpu
