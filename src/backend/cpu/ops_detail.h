// Building blocks of ops.h that the CPU backend calls directly to batch work across sequences
// or to write into strided outputs. Not part of the interface the CUDA backend is tested against.
#pragma once

#include <cstdint>
#include <span>

#include "backend/cpu/ops.h"

namespace mpserve::backend::cpu {

// linear() writing row r of y at y + r * ldy (ldy >= out), so two projections can fill the two
// halves of one (rows, 2*inter) buffer.
void linear_strided(const float* x, const model::TensorView& w, const model::TensorView& bias, float* y,
                    int64_t ldy, int64_t rows, ThreadPool& pool);

// Tests: makes linear() use its baseline x86-64 (SSE2) kernel even where the CPU has AVX2+FMA.
void linear_force_baseline(bool on);

// One query head attending over keys/values at positions [0, kv_len) of one sequence:
// q (head_dim), out (head_dim), scratch (>= kv_len floats). kv_head is the KV head this query
// head reads (GQA).
void attention_head(const float* q, const KvLayerView& kv, std::span<const int32_t> block_table, int64_t kv_len,
                    int64_t kv_head, float scale, float* out, float* scratch);

}  // namespace mpserve::backend::cpu
