// CPU reference operations. The CPU backend is composed from these, and every CUDA kernel is
// tested against them. All arithmetic is f32; weights may be bf16/f16/f32.
#pragma once

#include <cstdint>
#include <span>

#include "common/thread_pool.h"
#include "model/tensor.h"

namespace mpserve::backend::cpu {

// y (rows, dim) = x * rsqrt(mean(x^2) + eps) * w.  w: (dim) any dtype.  y may alias x.
void rms_norm(const float* x, const model::TensorView& w, float* y, int64_t rows, int64_t dim, float eps);

// residual += x; then y = rms_norm(residual) (the fused add+norm the CUDA backend uses).
void add_rms_norm(float* residual, const float* x, const model::TensorView& w, float* y, int64_t rows,
                  int64_t dim, float eps);

// y (rows, out) = x (rows, in) . W^T (+ bias).  W: (out, in), bias: (out) or empty.
void linear(const float* x, const model::TensorView& w, const model::TensorView& bias, float* y, int64_t rows,
            ThreadPool& pool);

// Rotate-half RoPE in place on x (rows, n_heads, head_dim); row r uses positions[r].
// inv_freq has head_dim/2 entries (model::rope_inv_freq).
void rope(float* x, const int32_t* positions, int64_t rows, int64_t n_heads, int64_t head_dim,
          std::span<const float> inv_freq);

// out (rows, inter) = silu(gate) * up, where gate_up is (rows, 2*inter): [gate | up].
void silu_mul(const float* gate_up, float* out, int64_t rows, int64_t inter);

// Paged KV cache of one layer: K and V each (num_blocks, block_size, n_kv_heads, head_dim) f32.
struct KvLayerView {
  float* k = nullptr;
  float* v = nullptr;
  int64_t block_size = 0;
  int64_t n_kv_heads = 0;
  int64_t head_dim = 0;
};

// Writes k, v (n, n_kv_heads*head_dim) for positions [start, start+n) into the blocks of
// block_table.
void kv_write(const KvLayerView& kv, std::span<const int32_t> block_table, int64_t start, int64_t n, const float* k,
              const float* v);

// Causal GQA attention for one sequence: q (n, n_heads*head_dim) holds queries for positions
// [context_len, context_len + n); keys/values for positions [0, context_len + n) are read from
// the paged cache. out (n, n_heads*head_dim). scale = 1/sqrt(head_dim).
void paged_attention(const float* q, const KvLayerView& kv, std::span<const int32_t> block_table,
                     int64_t context_len, int64_t n, int64_t n_heads, float scale, float* out, ThreadPool& pool);

// Embedding rows for token ids: out (n, H).
void embed(const model::TensorView& table, const int32_t* ids, int64_t n, float* out);

// Reads element i of a bf16/f16/f32 tensor as f32.
float load_element(const model::TensorView& t, int64_t i);

}  // namespace mpserve::backend::cpu
