#include "backend/cpu/ops.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <vector>

#include "backend/cpu/ops_detail.h"
#include "common/check.h"
#include "common/half.h"

namespace mpserve::backend::cpu {
namespace {

// Converts elements [offset, offset + n) of a bf16/f16/f32 tensor to f32.
void load_f32(const model::TensorView& t, int64_t offset, int64_t n, float* out) {
  switch (t.dtype) {
    case model::DType::kF32:
      std::memcpy(out, static_cast<const float*>(t.data) + offset, static_cast<size_t>(n) * sizeof(float));
      return;
    case model::DType::kBF16: {
      const uint16_t* src = static_cast<const uint16_t*>(t.data) + offset;
      // note: the shift form (not bf16_to_f32's memcpy per element) so the loop vectorises.
      for (int64_t i = 0; i < n; ++i) {
        uint32_t bits = static_cast<uint32_t>(src[i]) << 16;
        std::memcpy(&out[i], &bits, sizeof(float));
      }
      return;
    }
    case model::DType::kF16: {
      const uint16_t* src = static_cast<const uint16_t*>(t.data) + offset;
      for (int64_t i = 0; i < n; ++i) out[i] = f16_to_f32(src[i]);
      return;
    }
  }
}

float dot(const float* a, const float* b, int64_t n) {
  // note: 8 independent partial sums let the compiler vectorise without -ffast-math.
  float acc[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int l = 0; l < 8; ++l) acc[l] += a[i + l] * b[i + l];
  }
  float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

// y[r * ldy + c] = dot(x row r, w row c) for an R x C tile; rows of x are ldx apart, rows of w
// are ldw apart, both of length k.
// note: one pass over k feeds R*C dot products, so each loaded x and w element is used C and R
// times. L lanes of partial sums per product match the vector width (4 for SSE2, 8 for AVX2),
// which lets the compiler vectorise without -ffast-math.
#if defined(__GNUC__)
// note: forced so the tile loops are compiled inside each target-specific matmul_block.
#define MPS_TILE_INLINE inline __attribute__((always_inline))
#else
#define MPS_TILE_INLINE inline
#endif

template <int L, int R, int C>
MPS_TILE_INLINE void dot_tile(const float* x, int64_t ldx, const float* w, int64_t ldw, int64_t k, float* y,
                              int64_t ldy) {
  // note: a GCC/Clang vector type keeps each accumulator in one register (plain float arrays
  // were partly spilled to the stack); memcpy is the unaligned load.
  typedef float Vec __attribute__((vector_size(L * sizeof(float))));
  Vec acc[R][C] = {};
  int64_t i = 0;
  for (; i + L <= k; i += L) {
    Vec xv[R], wv[C];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) std::memcpy(&xv[r], x + r * ldx + i, sizeof(Vec));
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) std::memcpy(&wv[c], w + c * ldw + i, sizeof(Vec));
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) acc[r][c] += xv[r] * wv[c];
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < C; ++c) {
      float s = 0.0f;
      for (int l = 0; l < L; ++l) s += acc[r][c][l];
      for (int64_t j = i; j < k; ++j) s += x[r * ldx + j] * w[c * ldw + j];
      y[r * ldy + c] = s;
    }
  }
}

// y[0..rows) x [0..ncols) = x (rows, k) . w (ncols, k)^T, y row stride ldy.
template <int L>
MPS_TILE_INLINE void matmul_tiles(const float* x, int64_t rows, const float* w, int64_t ncols, int64_t k, float* y,
                                  int64_t ldy) {
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4) {
    int64_t c = 0;
    for (; c + 2 <= ncols; c += 2) dot_tile<L, 4, 2>(x + r * k, k, w + c * k, k, k, y + r * ldy + c, ldy);
    for (; c < ncols; ++c) dot_tile<L, 4, 1>(x + r * k, k, w + c * k, k, k, y + r * ldy + c, ldy);
  }
  for (; r < rows; ++r) {
    int64_t c = 0;
    for (; c + 4 <= ncols; c += 4) dot_tile<L, 1, 4>(x + r * k, k, w + c * k, k, k, y + r * ldy + c, ldy);
    for (; c < ncols; ++c) dot_tile<L, 1, 1>(x + r * k, k, w + c * k, k, k, y + r * ldy + c, ldy);
  }
}

void matmul_block_baseline(const float* x, int64_t rows, const float* w, int64_t ncols, int64_t k, float* y,
                           int64_t ldy) {
  matmul_tiles<4>(x, rows, w, ncols, k, y, ldy);
}

#if defined(__x86_64__) && defined(__GNUC__)
// note: a copy compiled for AVX2+FMA, chosen at run time where the CPU has them; the baseline
// copy keeps the binary runnable on any x86-64 (no -march flags).
__attribute__((target("avx2,fma"))) void matmul_block_avx2(const float* x, int64_t rows, const float* w,
                                                             int64_t ncols, int64_t k, float* y, int64_t ldy) {
  matmul_tiles<8>(x, rows, w, ncols, k, y, ldy);
}
bool cpu_has_avx2_fma() {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return has;
}
#endif

std::atomic<bool> g_force_baseline{false};

void matmul_block(const float* x, int64_t rows, const float* w, int64_t ncols, int64_t k, float* y, int64_t ldy) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (!g_force_baseline.load(std::memory_order_relaxed) && cpu_has_avx2_fma()) {
    return matmul_block_avx2(x, rows, w, ncols, k, y, ldy);
  }
#endif
  matmul_block_baseline(x, rows, w, ncols, k, y, ldy);
}

// Weight rows converted to f32 at a time, per thread.
constexpr int64_t kOutBlock = 16;

}  // namespace

void linear_force_baseline(bool on) { g_force_baseline.store(on); }

float load_element(const model::TensorView& t, int64_t i) {
  switch (t.dtype) {
    case model::DType::kF32:
      return static_cast<const float*>(t.data)[i];
    case model::DType::kBF16:
      return bf16_to_f32(static_cast<const uint16_t*>(t.data)[i]);
    case model::DType::kF16:
      return f16_to_f32(static_cast<const uint16_t*>(t.data)[i]);
  }
  return 0.0f;
}

void rms_norm(const float* x, const model::TensorView& w, float* y, int64_t rows, int64_t dim, float eps) {
  MPS_CHECK_MSG(w.numel() == dim, "rms_norm weight {} has {} elements, expected {}", w.name, w.numel(), dim);
  std::vector<float> wf(static_cast<size_t>(dim));
  load_f32(w, 0, dim, wf.data());
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * dim;
    float* yr = y + r * dim;
    const float mean_sq = dot(xr, xr, dim) / static_cast<float>(dim);
    const float inv = 1.0f / std::sqrt(mean_sq + eps);
    for (int64_t i = 0; i < dim; ++i) yr[i] = (xr[i] * inv) * wf[static_cast<size_t>(i)];
  }
}

void add_rms_norm(float* residual, const float* x, const model::TensorView& w, float* y, int64_t rows, int64_t dim,
                  float eps) {
  for (int64_t i = 0; i < rows * dim; ++i) residual[i] += x[i];
  rms_norm(residual, w, y, rows, dim, eps);
}

void linear_strided(const float* x, const model::TensorView& w, const model::TensorView& bias, float* y,
                    int64_t ldy, int64_t rows, ThreadPool& pool) {
  MPS_CHECK_MSG(w.shape.size() == 2, "linear weight {} is not 2-D: {}", w.name, w.shape_string());
  const int64_t out = w.dim(0);
  const int64_t in = w.dim(1);
  MPS_CHECK(ldy >= out);
  MPS_CHECK_MSG(bias.empty() || bias.numel() == out, "bias {} has {} elements, expected {}", bias.name,
                bias.numel(), out);
  if (rows <= 0) return;
  std::vector<float> bias_f32;
  if (!bias.empty()) {
    bias_f32.resize(static_cast<size_t>(out));
    load_f32(bias, 0, out, bias_f32.data());
  }
  const int64_t num_blocks = (out + kOutBlock - 1) / kOutBlock;
  pool.parallel_for(num_blocks, [&](int64_t begin, int64_t end) {
    thread_local std::vector<float> wbuf;  // (kOutBlock, in) weight rows as f32
    if (w.dtype != model::DType::kF32) wbuf.resize(static_cast<size_t>(kOutBlock * in));
    for (int64_t b = begin; b < end; ++b) {
      const int64_t o0 = b * kOutBlock;
      const int64_t n = std::min(kOutBlock, out - o0);
      const float* wf;
      if (w.dtype == model::DType::kF32) {
        wf = static_cast<const float*>(w.data) + o0 * in;
      } else {
        load_f32(w, o0 * in, n * in, wbuf.data());
        wf = wbuf.data();
      }
      matmul_block(x, rows, wf, n, in, y + o0, ldy);
      if (!bias_f32.empty()) {
        for (int64_t r = 0; r < rows; ++r) {
          for (int64_t c = 0; c < n; ++c) y[r * ldy + o0 + c] += bias_f32[static_cast<size_t>(o0 + c)];
        }
      }
    }
  });
}

void linear(const float* x, const model::TensorView& w, const model::TensorView& bias, float* y, int64_t rows,
            ThreadPool& pool) {
  MPS_CHECK_MSG(w.shape.size() == 2, "linear weight {} is not 2-D: {}", w.name, w.shape_string());
  linear_strided(x, w, bias, y, w.dim(0), rows, pool);
}

void rope(float* x, const int32_t* positions, int64_t rows, int64_t n_heads, int64_t head_dim,
          std::span<const float> inv_freq) {
  const int64_t half = head_dim / 2;
  MPS_CHECK_MSG(static_cast<int64_t>(inv_freq.size()) == half, "rope: {} inverse frequencies for head_dim {}",
                inv_freq.size(), head_dim);
  std::vector<float> cos_v(static_cast<size_t>(half)), sin_v(static_cast<size_t>(half));
  for (int64_t r = 0; r < rows; ++r) {
    // As transformers: angle = float(position) * inv_freq in f32, then f32 cos/sin.
    for (int64_t i = 0; i < half; ++i) {
      const float angle = static_cast<float>(positions[r]) * inv_freq[static_cast<size_t>(i)];
      cos_v[static_cast<size_t>(i)] = std::cos(angle);
      sin_v[static_cast<size_t>(i)] = std::sin(angle);
    }
    for (int64_t h = 0; h < n_heads; ++h) {
      float* xh = x + (r * n_heads + h) * head_dim;
      for (int64_t i = 0; i < half; ++i) {
        const float x1 = xh[i], x2 = xh[i + half];
        const float c = cos_v[static_cast<size_t>(i)], s = sin_v[static_cast<size_t>(i)];
        xh[i] = x1 * c - x2 * s;
        xh[i + half] = x2 * c + x1 * s;
      }
    }
  }
}

void silu_mul(const float* gate_up, float* out, int64_t rows, int64_t inter) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* g = gate_up + r * 2 * inter;
    const float* u = g + inter;
    float* o = out + r * inter;
    for (int64_t i = 0; i < inter; ++i) o[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
  }
}

void kv_write(const KvLayerView& kv, std::span<const int32_t> block_table, int64_t start, int64_t n, const float* k,
              const float* v) {
  const int64_t row = kv.n_kv_heads * kv.head_dim;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t pos = start + i;
    const size_t b = static_cast<size_t>(pos / kv.block_size);
    MPS_CHECK_MSG(b < block_table.size(), "kv_write: position {} beyond a block table of {} blocks", pos,
                  block_table.size());
    const int64_t slot = static_cast<int64_t>(block_table[b]) * kv.block_size + pos % kv.block_size;
    std::memcpy(kv.k + slot * row, k + i * row, static_cast<size_t>(row) * sizeof(float));
    std::memcpy(kv.v + slot * row, v + i * row, static_cast<size_t>(row) * sizeof(float));
  }
}

void attention_head(const float* q, const KvLayerView& kv, std::span<const int32_t> block_table, int64_t kv_len,
                    int64_t kv_head, float scale, float* out, float* scratch) {
  const int64_t d = kv.head_dim;
  const int64_t row = kv.n_kv_heads * d;
  MPS_CHECK_MSG((kv_len + kv.block_size - 1) / kv.block_size <= static_cast<int64_t>(block_table.size()),
                "attention: {} tokens need more than the {} blocks of the block table", kv_len, block_table.size());
  auto slot_of = [&](int64_t pos) {
    return static_cast<int64_t>(block_table[static_cast<size_t>(pos / kv.block_size)]) * kv.block_size +
           pos % kv.block_size;
  };
  float max_score = -INFINITY;
  for (int64_t j = 0; j < kv_len; ++j) {
    const float s = dot(q, kv.k + slot_of(j) * row + kv_head * d, d) * scale;
    scratch[j] = s;
    max_score = std::max(max_score, s);
  }
  float sum = 0.0f;
  for (int64_t j = 0; j < kv_len; ++j) {
    scratch[j] = std::exp(scratch[j] - max_score);
    sum += scratch[j];
  }
  const float inv_sum = 1.0f / sum;
  for (int64_t i = 0; i < d; ++i) out[i] = 0.0f;
  for (int64_t j = 0; j < kv_len; ++j) {
    const float p = scratch[j] * inv_sum;
    const float* vj = kv.v + slot_of(j) * row + kv_head * d;
    for (int64_t i = 0; i < d; ++i) out[i] += p * vj[i];
  }
}

void paged_attention(const float* q, const KvLayerView& kv, std::span<const int32_t> block_table,
                     int64_t context_len, int64_t n, int64_t n_heads, float scale, float* out, ThreadPool& pool) {
  const int64_t d = kv.head_dim;
  MPS_CHECK_MSG(n_heads % kv.n_kv_heads == 0, "attention: {} query heads for {} KV heads", n_heads, kv.n_kv_heads);
  const int64_t group = n_heads / kv.n_kv_heads;
  pool.parallel_for(n * n_heads, [&](int64_t begin, int64_t end) {
    thread_local std::vector<float> scratch;
    scratch.resize(static_cast<size_t>(context_len + n));
    for (int64_t t = begin; t < end; ++t) {
      const int64_t i = t / n_heads, h = t % n_heads;
      attention_head(q + (i * n_heads + h) * d, kv, block_table, context_len + i + 1, h / group, scale,
                     out + (i * n_heads + h) * d, scratch.data());
    }
  });
}

void embed(const model::TensorView& table, const int32_t* ids, int64_t n, float* out) {
  MPS_CHECK_MSG(table.shape.size() == 2, "embedding {} is not 2-D: {}", table.name, table.shape_string());
  const int64_t vocab = table.dim(0), h = table.dim(1);
  for (int64_t i = 0; i < n; ++i) {
    MPS_CHECK_MSG(ids[i] >= 0 && ids[i] < vocab, "token id {} outside the vocabulary of {}", ids[i], vocab);
    load_f32(table, static_cast<int64_t>(ids[i]) * h, h, out + i * h);
  }
}

}  // namespace mpserve::backend::cpu
