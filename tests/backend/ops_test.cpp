// Each CPU reference op against a straightforward f64 implementation written here.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <complex>
#include <numeric>
#include <random>
#include <vector>

#include "backend/cpu/ops.h"
#include "backend/cpu/ops_detail.h"
#include "backend/test_model.h"

namespace mpserve::backend::cpu {
namespace {

using testing::normalized_error;
using testing::TensorArena;

std::vector<float> random_vector(size_t n, uint32_t seed, float a = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> d(-a, a);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

auto random_gen(uint32_t seed, float a = 1.0f) {
  return [rng = std::mt19937(seed), a]() mutable { return std::uniform_real_distribution<float>(-a, a)(rng); };
}

std::vector<float> naive_rms_norm(const std::vector<float>& x, const model::TensorView& w, int64_t rows, int64_t dim,
                                  float eps) {
  std::vector<float> y(x.size());
  for (int64_t r = 0; r < rows; ++r) {
    double ss = 0;
    for (int64_t i = 0; i < dim; ++i) ss += double(x[size_t(r * dim + i)]) * x[size_t(r * dim + i)];
    const double inv = 1.0 / std::sqrt(ss / double(dim) + eps);
    for (int64_t i = 0; i < dim; ++i) y[size_t(r * dim + i)] = float(x[size_t(r * dim + i)] * inv * load_element(w, i));
  }
  return y;
}

TEST(CpuOps, load_element_reads_every_dtype) {
  TensorArena arena;
  std::vector<float> vals = {1.5f, -2.25f, 0.0f, 65504.0f, 1e-3f};
  for (auto dt : {model::DType::kF32, model::DType::kBF16, model::DType::kF16}) {
    size_t i = 0;
    auto t = arena.make("t", dt, {5}, [&] { return vals[i++]; });
    for (size_t j = 0; j < vals.size(); ++j) {
      const float tol = dt == model::DType::kF32 ? 0.0f : std::abs(vals[j]) * 0.01f;
      EXPECT_NEAR(load_element(t, int64_t(j)), vals[j], tol);
    }
  }
}

TEST(CpuOps, rms_norm_matches_naive_and_may_alias) {
  TensorArena arena;
  for (auto dt : {model::DType::kF32, model::DType::kBF16, model::DType::kF16}) {
    for (int64_t dim : {1, 7, 64, 131}) {
      const int64_t rows = 5;
      auto w = arena.make("w", dt, {dim}, random_gen(3, 2.0f));
      auto x = random_vector(size_t(rows * dim), 4, 3.0f);
      std::vector<float> y(x.size());
      rms_norm(x.data(), w, y.data(), rows, dim, 1e-6f);
      const auto want = naive_rms_norm(x, w, rows, dim, 1e-6f);
      EXPECT_LT(normalized_error(y, want), 1e-5) << "dim " << dim;
      rms_norm(x.data(), w, x.data(), rows, dim, 1e-6f);
      EXPECT_EQ(x, y);
    }
  }
}

TEST(CpuOps, add_rms_norm_adds_then_normalises) {
  TensorArena arena;
  const int64_t rows = 3, dim = 45;
  auto w = arena.make("w", model::DType::kBF16, {dim}, random_gen(5, 2.0f));
  auto residual = random_vector(size_t(rows * dim), 6);
  const auto x = random_vector(size_t(rows * dim), 7);
  std::vector<float> sum(residual.size());
  for (size_t i = 0; i < sum.size(); ++i) sum[i] = residual[i] + x[i];
  std::vector<float> y(x.size());
  add_rms_norm(residual.data(), x.data(), w, y.data(), rows, dim, 1e-5f);
  EXPECT_EQ(residual, sum);
  EXPECT_LT(normalized_error(y, naive_rms_norm(sum, w, rows, dim, 1e-5f)), 1e-5);
}

class CpuOpsKernel : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override { linear_force_baseline(GetParam()); }
  void TearDown() override { linear_force_baseline(false); }
};

TEST_P(CpuOpsKernel, linear_matches_naive_for_every_dtype_shape_and_thread_count) {
  TensorArena arena;
  ThreadPool pool1(1), pool3(3);
  for (auto dt : {model::DType::kF32, model::DType::kBF16, model::DType::kF16}) {
    for (int64_t rows : {1, 3, 4, 9}) {
      for (auto [out, in] : {std::pair<int64_t, int64_t>{1, 1}, {5, 3}, {33, 40}, {70, 131}}) {
        auto w = arena.make("w", dt, {out, in}, random_gen(uint32_t(out * 7 + in)));
        auto bias = arena.make("b", dt, {out}, random_gen(9));
        const auto x = random_vector(size_t(rows * in), uint32_t(rows));
        for (bool with_bias : {false, true}) {
          std::vector<float> want(size_t(rows * out));
          for (int64_t r = 0; r < rows; ++r) {
            for (int64_t o = 0; o < out; ++o) {
              double s = with_bias ? load_element(bias, o) : 0.0;
              for (int64_t k = 0; k < in; ++k) s += double(x[size_t(r * in + k)]) * load_element(w, o * in + k);
              want[size_t(r * out + o)] = float(s);
            }
          }
          for (ThreadPool* pool : {&pool1, &pool3}) {
            std::vector<float> y(want.size(), NAN);
            linear(x.data(), w, with_bias ? bias : model::TensorView{}, y.data(), rows, *pool);
            EXPECT_LT(normalized_error(y, want), 1e-5)
                << "dtype " << int(dt) << " rows " << rows << " out " << out << " in " << in << " bias " << with_bias;
          }
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Kernels, CpuOpsKernel, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "baseline" : "best"; });

TEST(CpuOps, rope_equals_complex_rotation_of_half_pairs) {
  const int64_t rows = 4, heads = 3, hd = 10;
  std::vector<float> inv_freq = {1.0f, 0.3f, 0.1f, 0.01f, 0.001f};
  const std::vector<int32_t> positions = {0, 1, 7, 1000};
  auto x = random_vector(size_t(rows * heads * hd), 11);
  std::vector<float> want(x.size());
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t i = 0; i < hd / 2; ++i) {
        const size_t a = size_t((r * heads + h) * hd + i), b = a + size_t(hd / 2);
        // (x_i + i x_{i+D/2}) * e^{i pos theta_i}
        const double angle = double(float(positions[size_t(r)]) * inv_freq[size_t(i)]);
        const std::complex<double> z = std::complex<double>(x[a], x[b]) * std::polar(1.0, angle);
        want[a] = float(z.real());
        want[b] = float(z.imag());
      }
    }
  }
  rope(x.data(), positions.data(), rows, heads, hd, inv_freq);
  EXPECT_LT(normalized_error(x, want), 1e-5);
}

TEST(CpuOps, silu_mul_matches_naive) {
  const int64_t rows = 3, inter = 37;
  const auto gate_up = random_vector(size_t(rows * 2 * inter), 12, 6.0f);
  std::vector<float> out(size_t(rows * inter)), want(out.size());
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < inter; ++i) {
      const double g = gate_up[size_t(r * 2 * inter + i)], u = gate_up[size_t(r * 2 * inter + inter + i)];
      want[size_t(r * inter + i)] = float(g / (1 + std::exp(-g)) * u);
    }
  }
  silu_mul(gate_up.data(), out.data(), rows, inter);
  EXPECT_LT(normalized_error(out, want), 1e-5);
}

TEST(CpuOps, embed_gathers_rows_of_any_dtype) {
  TensorArena arena;
  auto table = arena.make("e", model::DType::kBF16, {10, 6}, random_gen(13));
  const std::vector<int32_t> ids = {3, 0, 9, 3};
  std::vector<float> out(ids.size() * 6);
  embed(table, ids.data(), int64_t(ids.size()), out.data());
  for (size_t t = 0; t < ids.size(); ++t) {
    for (int64_t i = 0; i < 6; ++i) EXPECT_EQ(out[t * 6 + size_t(i)], load_element(table, ids[t] * 6 + i));
  }
}

// Dense causal GQA attention in f64: q (n, heads*d) at positions [ctx, ctx+n), k/v (ctx+n, kv_heads*d).
std::vector<float> dense_attention(const std::vector<float>& q, const std::vector<float>& k, const std::vector<float>& v,
                                   int64_t ctx, int64_t n, int64_t heads, int64_t kv_heads, int64_t d) {
  std::vector<float> out(size_t(n * heads * d));
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t g = h / (heads / kv_heads);
      std::vector<double> s(size_t(ctx + i + 1));
      for (int64_t j = 0; j <= ctx + i; ++j) {
        double dot = 0;
        for (int64_t e = 0; e < d; ++e) dot += double(q[size_t((i * heads + h) * d + e)]) * k[size_t((j * kv_heads + g) * d + e)];
        s[size_t(j)] = dot / std::sqrt(double(d));
      }
      const double mx = *std::max_element(s.begin(), s.end());
      double sum = 0;
      for (double& x : s) sum += (x = std::exp(x - mx));
      for (int64_t e = 0; e < d; ++e) {
        double acc = 0;
        for (int64_t j = 0; j <= ctx + i; ++j) acc += s[size_t(j)] / sum * v[size_t((j * kv_heads + g) * d + e)];
        out[size_t((i * heads + h) * d + e)] = float(acc);
      }
    }
  }
  return out;
}

TEST(CpuOps, paged_attention_with_scattered_blocks_equals_contiguous_attention) {
  const int64_t bs = 4, kv_heads = 2, heads = 6, d = 8, num_blocks = 16;
  const int64_t ctx = 9, n = 5, total = ctx + n;  // 14 tokens: 4 blocks, the last partly filled
  const std::vector<int32_t> block_table = {11, 2, 7, 14};
  std::vector<float> kc(size_t(num_blocks * bs * kv_heads * d), NAN), vc(kc.size(), NAN);
  KvLayerView kv{kc.data(), vc.data(), bs, kv_heads, d};
  const auto k = random_vector(size_t(total * kv_heads * d), 21, 2.0f);
  const auto v = random_vector(size_t(total * kv_heads * d), 22);
  const auto q = random_vector(size_t(n * heads * d), 23, 2.0f);
  // Context written in two uneven pieces, then this step's tokens.
  kv_write(kv, block_table, 0, 6, k.data(), v.data());
  kv_write(kv, block_table, 6, ctx - 6, k.data() + 6 * kv_heads * d, v.data() + 6 * kv_heads * d);
  kv_write(kv, block_table, ctx, n, k.data() + ctx * kv_heads * d, v.data() + ctx * kv_heads * d);
  // The token at position 5 lands in block 2 (second table entry), slot 1.
  EXPECT_EQ(kc[size_t((2 * bs + 1) * kv_heads * d)], k[size_t(5 * kv_heads * d)]);

  const auto want = dense_attention(q, k, v, ctx, n, heads, kv_heads, d);
  for (int threads : {1, 4}) {
    ThreadPool pool(threads);
    std::vector<float> out(q.size(), NAN);
    paged_attention(q.data(), kv, block_table, ctx, n, heads, 1.0f / std::sqrt(float(d)), out.data(), pool);
    EXPECT_LT(normalized_error(out, want), 1e-5) << threads << " threads";
  }
}

}  // namespace
}  // namespace mpserve::backend::cpu
