#include "backend/cuda/kernel_test_api.h"

#include <cmath>
#include <algorithm>
#include <limits>
#include <memory>
#include <stdexcept>

#include "backend/cuda/activation.cuh"
#include "backend/cuda/attention.cuh"
#include "backend/cuda/cuda_check.cuh"
#include "backend/cuda/embedding.cuh"
#include "backend/cuda/gemm.h"
#include "backend/cuda/gemv.cuh"
#include "backend/cuda/mma_linear.cuh"
#include "backend/cuda/pdl.cuh"
#include "backend/cuda/qkv_rope.cuh"
#include "backend/cuda/rms_norm.cuh"
#include "backend/cuda/sampler.cuh"
#include "common/half.h"

namespace mpserve::backend::cuda::test_api {
namespace {

// A device buffer for one test call.
template <typename T>
struct Dev {
  T* p = nullptr;
  size_t n = 0;
  explicit Dev(size_t count) : n(count) { CUDA_CHECK(cudaMalloc(&p, std::max<size_t>(count, 1) * sizeof(T))); }
  ~Dev() { cudaFree(p); }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  void poison() { CUDA_CHECK(cudaMemset(p, 0xff, std::max<size_t>(n, 1) * sizeof(T))); }  // NaN in f32 and bf16
};

Dev<float>* up_f32(const std::vector<float>& v) {
  auto* d = new Dev<float>(v.size());
  CUDA_CHECK(cudaMemcpy(d->p, v.data(), v.size() * sizeof(float), cudaMemcpyHostToDevice));
  return d;
}

std::unique_ptr<Dev<__nv_bfloat16>> up_bf16(const std::vector<float>& v) {
  auto d = std::make_unique<Dev<__nv_bfloat16>>(v.size());
  std::vector<uint16_t> h(v.size());
  for (size_t i = 0; i < v.size(); ++i) h[i] = f32_to_bf16(v[i]);
  CUDA_CHECK(cudaMemcpy(d->p, h.data(), h.size() * 2, cudaMemcpyHostToDevice));
  return d;
}

std::unique_ptr<Dev<int32_t>> up_i32(const std::vector<int32_t>& v) {
  auto d = std::make_unique<Dev<int32_t>>(v.size());
  CUDA_CHECK(cudaMemcpy(d->p, v.data(), v.size() * 4, cudaMemcpyHostToDevice));
  return d;
}

std::vector<float> down_bf16(const Dev<__nv_bfloat16>& d) {
  std::vector<uint16_t> h(d.n);
  CUDA_CHECK(cudaDeviceSynchronize());
  CUDA_CHECK(cudaMemcpy(h.data(), d.p, d.n * 2, cudaMemcpyDeviceToHost));
  std::vector<float> out(d.n);
  for (size_t i = 0; i < d.n; ++i) out[i] = bf16_to_f32(h[i]);
  return out;
}

std::vector<float> down_f32(const Dev<float>& d) {
  std::vector<float> out(d.n);
  CUDA_CHECK(cudaDeviceSynchronize());
  CUDA_CHECK(cudaMemcpy(out.data(), d.p, d.n * 4, cudaMemcpyDeviceToHost));
  return out;
}

// m as (outer, n_items, item_len) with items [0, pair_items) (the q and k heads) reordered into the
// RoPE pair layout of qkv_rope.cuh, as the backend's uploader reorders the qkv weight and bias.
std::vector<float> rope_pair_order(const std::vector<float>& m, int64_t n_items, int64_t item_len,
                                   int64_t pair_items, int64_t head_dim) {
  std::vector<float> out(m.size());
  const size_t stride = size_t(n_items * item_len);
  for (size_t o = 0; o < m.size(); o += stride)
    for (int64_t i = 0; i < n_items; ++i) {
      const int64_t src = i < pair_items ? rope_pair_source(i, head_dim) : i;
      std::copy_n(m.begin() + std::ptrdiff_t(o + size_t(src * item_len)), item_len,
                  out.begin() + std::ptrdiff_t(o + size_t(i * item_len)));
    }
  return out;
}

}  // namespace

bool gpu_available() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

std::vector<float> rms_norm(const std::vector<float>& x, const std::vector<float>& weight,
                            const std::vector<int32_t>& row_index, int rows, int hidden, float eps,
                            bool* x_unchanged) {
  std::unique_ptr<Dev<float>> dx(up_f32(x));
  auto w = up_bf16(weight);
  auto idx = row_index.empty() ? nullptr : up_i32(row_index);
  const int out_rows = row_index.empty() ? rows : static_cast<int>(row_index.size());
  Dev<__nv_bfloat16> out(size_t(out_rows) * size_t(hidden));
  out.poison();
  cuda::rms_norm(dx->p, w->p, out.p, idx ? idx->p : nullptr, out_rows, hidden, eps, 0);
  if (x_unchanged != nullptr) *x_unchanged = down_f32(*dx) == x;
  return down_bf16(out);
}

std::vector<float> silu_mul(const std::vector<float>& gate_up, int rows, int inter) {
  auto gu = up_bf16(gate_up);
  Dev<__nv_bfloat16> out(size_t(rows) * size_t(inter));
  out.poison();
  cuda::silu_mul(gu->p, out.p, rows, inter, 0);
  return down_bf16(out);
}

std::vector<float> embed(const std::vector<float>& table, const std::vector<int32_t>& ids, int vocab, int hidden) {
  auto t = up_bf16(table);
  auto i = up_i32(ids);
  Dev<float> out(ids.size() * size_t(hidden));
  out.poison();
  embed_lookup(t->p, i->p, out.p, static_cast<int>(ids.size()), hidden, vocab, 0);
  return down_f32(out);
}

std::vector<float> linear(const std::vector<float>& x, const std::vector<float>& w, int rows, int in, int out,
                          bool tune, int* candidates, const std::vector<float>* y0) {
  auto dx = up_bf16(x);
  auto dw = up_bf16(w);
  Dev<float> y(size_t(rows) * size_t(out));
  y.poison();
  if (y0 != nullptr) {
    if (y0->size() != y.n) throw std::invalid_argument("linear: y0 is not rows x out");
    CUDA_CHECK(cudaMemcpy(y.p, y0->data(), y.n * sizeof(float), cudaMemcpyHostToDevice));
  }
  Dev<unsigned char> ws(size_t{4} << 20);
  int l2_bytes = 0;
  CUDA_CHECK(cudaDeviceGetAttribute(&l2_bytes, cudaDevAttrL2CacheSize, 0));
  Dev<unsigned char> flush(tune ? size_t(std::max(l2_bytes, 1)) : 1);  // the L2's size, as gemm.h asks
  {
    Gemm g(ws.p, ws.n, tune ? flush.p : nullptr, tune ? flush.n : 0);
    g.linear(dx->p, dw->p, y.p, true, rows, in, out, 0, tune, /*accumulate=*/y0 != nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    if (candidates != nullptr) {
      const Gemm::TuneResult* r = g.tune_result(rows, in, out, true, y0 != nullptr);
      *candidates = r != nullptr ? r->candidates : 0;
    }
  }
  return down_f32(y);
}

// The device side of a qkv_rope_cache_write call shared by qkv_rope() and gemv_qkv_rope(): bias
// (in the RoPE pair layout), inv_freq, positions and slots uploaded; q and both caches allocated
// and poisoned; `args` filled except qkv, q_norm and k_norm.
struct RopeIo {
  std::unique_ptr<Dev<__nv_bfloat16>> bias;
  std::unique_ptr<Dev<float>> inv;
  std::unique_ptr<Dev<int32_t>> pos, slot;
  Dev<__nv_bfloat16> q, kc, vc;
  QkvRopeArgs args;

  RopeIo(const std::vector<float>& bias_natural, const std::vector<float>& inv_freq,
         const std::vector<int32_t>& positions, const std::vector<int32_t>& slots, int num_blocks, int n_heads,
         int n_kv_heads, int head_dim, int block_size, float eps)
      : bias(bias_natural.empty() ? nullptr
                                  : up_bf16(rope_pair_order(bias_natural, int64_t(n_heads + 2 * n_kv_heads) * head_dim,
                                                            1, int64_t(n_heads + n_kv_heads) * head_dim, head_dim))),
        inv(up_f32(inv_freq)),
        pos(up_i32(positions)),
        slot(up_i32(slots)),
        q(positions.size() * size_t(n_heads * head_dim)),
        kc(size_t(num_blocks) * size_t(n_kv_heads) * size_t(block_size) * size_t(head_dim)),
        vc(kc.n) {
    q.poison();
    kc.poison();
    vc.poison();
    args.bias = bias ? bias->p : nullptr;
    args.inv_freq = inv->p;
    args.positions = pos->p;
    args.slot_mapping = slot->p;
    args.q_out = q.p;
    args.k_cache = kc.p;
    args.v_cache = vc.p;
    args.num_tokens = static_cast<int>(positions.size());
    args.n_heads = n_heads;
    args.n_kv_heads = n_kv_heads;
    args.head_dim = head_dim;
    args.block_size = block_size;
    args.eps = eps;
  }
  QkvRopeOut download() const { return QkvRopeOut{down_bf16(q), down_bf16(kc), down_bf16(vc)}; }
};

QkvRopeOut qkv_rope(const std::vector<float>& qkv, const std::vector<float>& bias, const std::vector<float>& q_norm,
                    const std::vector<float>& k_norm, const std::vector<float>& inv_freq,
                    const std::vector<int32_t>& positions, const std::vector<int32_t>& slots, int num_blocks,
                    int n_heads, int n_kv_heads, int head_dim, int block_size, float eps) {
  const int64_t width = int64_t(n_heads + 2 * n_kv_heads) * head_dim, pairs = int64_t(n_heads + n_kv_heads) * head_dim;
  std::unique_ptr<Dev<float>> dqkv(up_f32(rope_pair_order(qkv, width, 1, pairs, head_dim)));
  auto dqn = q_norm.empty() ? nullptr : up_bf16(q_norm);
  auto dkn = k_norm.empty() ? nullptr : up_bf16(k_norm);
  RopeIo io(bias, inv_freq, positions, slots, num_blocks, n_heads, n_kv_heads, head_dim, block_size, eps);
  io.args.qkv = dqkv->p;
  io.args.q_norm = dqn ? dqn->p : nullptr;
  io.args.k_norm = dkn ? dkn->p : nullptr;
  qkv_rope_cache_write(io.args, 0);
  return io.download();
}

std::vector<float> attention(const std::vector<float>& q, const std::vector<float>& k_cache,
                             const std::vector<float>& v_cache, const std::vector<int32_t>& positions,
                             const std::vector<int32_t>& block_tables, int max_blocks_per_seq,
                             const std::vector<int32_t>& items, int n_heads, int n_kv_heads, int head_dim,
                             int block_size, int num_splits) {
  auto dq = up_bf16(q);
  auto dk = up_bf16(k_cache);
  auto dv = up_bf16(v_cache);
  auto dpos = up_i32(positions);
  auto dbt = up_i32(block_tables);
  auto ditems = up_i32(items);
  const int t = static_cast<int>(positions.size());
  Dev<__nv_bfloat16> out(size_t(t) * size_t(n_heads * head_dim));
  out.poison();
  Dev<float> po(size_t(num_splits) * size_t(t) * size_t(n_heads * head_dim));
  Dev<float> pml(size_t(num_splits) * size_t(t) * size_t(n_heads) * 2);
  AttentionArgs a;
  a.q = dq->p;
  a.k_cache = dk->p;
  a.v_cache = dv->p;
  a.out = out.p;
  a.positions = dpos->p;
  a.block_tables = dbt->p;
  a.items = ditems->p;
  a.max_blocks_per_seq = max_blocks_per_seq;
  a.num_items = static_cast<int>(items.size() / 4);
  a.num_tokens = t;
  a.n_heads = n_heads;
  a.n_kv_heads = n_kv_heads;
  a.head_dim = head_dim;
  a.block_size = block_size;
  a.scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  a.num_splits = num_splits;
  a.partial_o = po.p;
  a.partial_ml = pml.p;
  paged_attention(a, 0);
  return down_bf16(out);
}

int attention_tokens_per_item(int n_heads, int n_kv_heads) {
  return cuda::attention_tokens_per_item(n_heads, n_kv_heads);
}

std::vector<float> decode_attention(const std::vector<float>& q, const std::vector<float>& k_cache,
                                    const std::vector<float>& v_cache, const std::vector<int32_t>& positions,
                                    const std::vector<int32_t>& block_tables, int max_blocks_per_seq, int n_heads,
                                    int n_kv_heads, int head_dim, int block_size, int partition_size) {
  return decode_attention_launches(q, k_cache, v_cache, {positions}, block_tables, max_blocks_per_seq, n_heads,
                                   n_kv_heads, head_dim, block_size, partition_size)[0];
}

// ---- Small-batch GEMV (gemv.cu): the kernel, its plan, benchmarks ----

std::vector<float> gemv(GemvMode mode, const std::vector<float>& x, const std::vector<float>& norm_w,
                        const std::vector<float>& w, const std::vector<float>& y_init, int rows, int in, int out,
                        float eps, int n_tiles, int warps, int grid, bool mma, int bn, int split) {
  const bool norm = mode == GemvMode::kNormF32 || mode == GemvMode::kNormSwiGlu;
  std::unique_ptr<Dev<float>> x_f32(norm ? up_f32(x) : nullptr);
  std::unique_ptr<Dev<__nv_bfloat16>> x_bf16 = norm ? nullptr : up_bf16(x);
  std::unique_ptr<Dev<__nv_bfloat16>> dnw = norm ? up_bf16(norm_w) : nullptr;
  auto dw = up_bf16(w);
  GemvArgs a;
  a.x = norm ? static_cast<const void*>(x_f32->p) : static_cast<const void*>(x_bf16->p);
  a.norm_w = norm ? dnw->p : nullptr;
  a.eps = eps;
  a.w = dw->p;
  a.rows = rows;
  a.in = in;
  a.out = out;
  const GemvIn im = norm ? GemvIn::kRmsNorm : GemvIn::kBf16;
  const GemvOut om = mode == GemvMode::kNormSwiGlu ? GemvOut::kSwiGlu
                     : mode == GemvMode::kAddF32   ? GemvOut::kAddF32
                                                   : GemvOut::kF32;
  Dev<__nv_bfloat16> x_norm(mma && norm ? size_t(rows) * size_t(in) : 0);
  x_norm.poison();
  a.x_norm = x_norm.p;
  auto run = [&] {
    if (mma) {
      const MmaLinearPlan plan = mma_linear_plan(a, om, bn, split);
      cuda::mma_linear(a, im, om, 0, &plan);
    } else {
      GemvPlan plan = gemv_plan(a, im, om, n_tiles, warps);
      if (grid > 0) plan.grid = grid;
      cuda::gemv(a, im, om, 0, &plan);
    }
  };
  if (mode == GemvMode::kNormSwiGlu) {
    Dev<__nv_bfloat16> y(size_t(rows) * size_t(out));
    y.poison();
    a.y = y.p;
    run();
    return down_bf16(y);
  }
  std::unique_ptr<Dev<float>> y(mode == GemvMode::kAddF32 ? up_f32(y_init) : new Dev<float>(size_t(rows) * size_t(out)));
  if (mode != GemvMode::kAddF32) y->poison();
  a.y = y->p;
  run();
  return down_f32(*y);
}

QkvRopeOut gemv_qkv_rope(bool fused, const std::vector<float>& residual, const std::vector<float>& norm_w,
                         const std::vector<float>& w, const std::vector<float>& bias,
                         const std::vector<float>& inv_freq, const std::vector<int32_t>& positions,
                         const std::vector<int32_t>& slots, int num_blocks, int in, int n_heads, int n_kv_heads,
                         int head_dim, int block_size, float eps, int n_tiles, int warps, int grid, bool mma,
                         int bn, int split) {
  const int rows = static_cast<int>(positions.size());
  const int width = (n_heads + 2 * n_kv_heads) * head_dim, pairs = (n_heads + n_kv_heads) * head_dim;
  std::unique_ptr<Dev<float>> res(up_f32(residual));
  auto dnw = up_bf16(norm_w);
  auto dw = up_bf16(rope_pair_order(w, width, in, pairs, head_dim));
  RopeIo io(bias, inv_freq, positions, slots, num_blocks, n_heads, n_kv_heads, head_dim, block_size, eps);
  Dev<float> qkv(size_t(rows) * size_t(width));
  qkv.poison();
  GemvArgs a;
  a.x = res->p;
  a.norm_w = dnw->p;
  a.eps = eps;
  a.w = dw->p;
  a.rows = rows;
  a.in = in;
  a.out = width;
  const GemvOut om = fused ? GemvOut::kQkvRope : GemvOut::kF32;
  if (fused) a.rope = io.args;
  else a.y = qkv.p;
  Dev<__nv_bfloat16> x_norm(mma ? size_t(rows) * size_t(in) : 0);
  x_norm.poison();
  a.x_norm = x_norm.p;
  if (mma) {
    const MmaLinearPlan plan = mma_linear_plan(a, om, bn, split);
    cuda::mma_linear(a, GemvIn::kRmsNorm, om, 0, &plan);
  } else {
    GemvPlan plan = gemv_plan(a, GemvIn::kRmsNorm, om, n_tiles, warps);
    if (grid > 0) plan.grid = grid;
    cuda::gemv(a, GemvIn::kRmsNorm, om, 0, &plan);
  }
  if (!fused) {
    io.args.qkv = qkv.p;
    qkv_rope_cache_write(io.args, 0);
  }
  return io.download();
}

std::vector<float> gemv_chain(const std::vector<float>& x, const std::vector<float>& w_o, std::vector<float>& residual,
                              const std::vector<float>& norm_w, const std::vector<float>& w_q, int rows, int q, int h,
                              int out, int steps, float eps, bool mma) {
  auto dx = up_bf16(x);
  auto dwo = up_bf16(w_o);
  auto dnw = up_bf16(norm_w);
  auto dwq = up_bf16(w_q);
  std::unique_ptr<Dev<float>> res(up_f32(residual));
  Dev<float> y(size_t(rows) * size_t(out));
  y.poison();
  cudaStream_t s = nullptr;
  CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  GemvArgs o;
  o.x = dx->p, o.w = dwo->p, o.y = res->p, o.rows = rows, o.in = q, o.out = h;
  GemvArgs n;
  n.x = res->p, n.norm_w = dnw->p, n.eps = eps, n.w = dwq->p, n.y = y.p, n.rows = rows, n.in = h, n.out = out;
  Dev<__nv_bfloat16> x_norm(size_t(rows) * size_t(h));
  n.x_norm = x_norm.p;
  for (int i = 0; i < steps; ++i) {
    if (mma) {
      cuda::mma_linear(o, GemvIn::kBf16, GemvOut::kAddF32, s);
      cuda::mma_linear(n, GemvIn::kRmsNorm, GemvOut::kF32, s);
    } else {
      cuda::gemv(o, GemvIn::kBf16, GemvOut::kAddF32, s);
      cuda::gemv(n, GemvIn::kRmsNorm, GemvOut::kF32, s);
    }
  }
  CUDA_CHECK(cudaStreamSynchronize(s));
  CUDA_CHECK(cudaStreamDestroy(s));
  residual = down_f32(*res);
  return down_f32(y);
}

namespace {

// note: 256 MiB of weight copies per graph replay is several times any Hopper L2 (50-60 MiB), so
// every launch streams its weights from HBM as a decode step does.
constexpr size_t kBenchRotateBytes = size_t{256} << 20;
constexpr size_t kBenchWorkspaceBytes = size_t{32} << 20;  // the backend's cuBLASLt workspace

// Captures enqueue() on a fresh stream into a graph (after one eager run that creates plans and
// caches), replays it `repeats` times after 3 warm-ups, and returns the replay times (ms), sorted.
template <typename F>
std::vector<float> time_graph(F&& enqueue, int repeats) {
  cudaStream_t s = nullptr;
  CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  enqueue(s);
  CUDA_CHECK(cudaStreamSynchronize(s));
  cudaGraph_t g = nullptr;
  cudaGraphExec_t ge = nullptr;
  CUDA_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  enqueue(s);
  CUDA_CHECK(cudaStreamEndCapture(s, &g));
  CUDA_CHECK(cudaGraphInstantiate(&ge, g, 0));
  cudaEvent_t e0 = nullptr, e1 = nullptr;
  CUDA_CHECK(cudaEventCreate(&e0));
  CUDA_CHECK(cudaEventCreate(&e1));
  for (int i = 0; i < 3; ++i) CUDA_CHECK(cudaGraphLaunch(ge, s));
  std::vector<float> ms;
  for (int i = 0; i < repeats; ++i) {
    CUDA_CHECK(cudaEventRecord(e0, s));
    CUDA_CHECK(cudaGraphLaunch(ge, s));
    CUDA_CHECK(cudaEventRecord(e1, s));
    CUDA_CHECK(cudaEventSynchronize(e1));
    float t = 0;
    CUDA_CHECK(cudaEventElapsedTime(&t, e0, e1));
    ms.push_back(t);
  }
  CUDA_CHECK(cudaEventDestroy(e0));
  CUDA_CHECK(cudaEventDestroy(e1));
  CUDA_CHECK(cudaGraphExecDestroy(ge));
  CUDA_CHECK(cudaGraphDestroy(g));
  CUDA_CHECK(cudaStreamDestroy(s));
  std::sort(ms.begin(), ms.end());
  return ms;
}

void fill_times(GemvBench& b, const std::vector<float>& ms, int per_replay) {
  b.us_median = 1e3 * ms[ms.size() / 2] / per_replay;
  b.us_min = 1e3 * ms.front() / per_replay;
  b.us_max = 1e3 * ms.back() / per_replay;
}

// Small finite values everywhere (timing does not depend on them): bytes 0x3A make bf16
// 7.1e-4 and f32 7.1e-4; 0x3F makes bf16 0.75 (norm weights).
template <typename T>
void fill(Dev<T>& d, int byte) {
  CUDA_CHECK(cudaMemset(d.p, byte, std::max<size_t>(d.n, 1) * sizeof(T)));
}

}  // namespace

GemvBench gemv_bench(GemvMode mode, bool cublas, int rows, int in, int out, int repeats, int n_tiles, int warps,
                     int grid, bool mma, int bn, int split) {
  const bool norm = mode == GemvMode::kNormF32 || mode == GemvMode::kNormSwiGlu;
  const bool swiglu = mode == GemvMode::kNormSwiGlu;
  const size_t w_elems = size_t(swiglu ? 2 * out : out) * size_t(in);
  GemvBench b;
  b.weight_bytes = double(w_elems) * 2;
  b.copies = static_cast<int>(std::max<size_t>(2, CEIL_DIV(kBenchRotateBytes, w_elems * 2)));
  b.launches = std::max(b.copies, 8);
  Dev<__nv_bfloat16> w(w_elems * size_t(b.copies));
  fill(w, 0x3A);
  Dev<float> x_f32(size_t(rows) * in), y_f32(size_t(rows) * (swiglu ? 2 * out : out));
  Dev<__nv_bfloat16> x_bf16(size_t(rows) * in), y_bf16(size_t(rows) * (swiglu ? 2 * out : out)), nw(in);
  Dev<__nv_bfloat16> x_norm(size_t(rows) * in);
  fill(x_f32, 0x3A);
  fill(x_bf16, 0x3A);
  fill(nw, 0x3F);
  fill(y_f32, 0);
  fill(y_bf16, 0);
  Dev<unsigned char> ws(cublas ? kBenchWorkspaceBytes : 0);
  std::unique_ptr<Gemm> gemm = cublas ? std::make_unique<Gemm>(ws.p, ws.n) : nullptr;
  GemvArgs a;
  a.x = norm ? static_cast<const void*>(x_f32.p) : static_cast<const void*>(x_bf16.p);
  a.norm_w = nw.p;
  a.eps = 1e-6f;
  a.y = swiglu ? static_cast<void*>(y_bf16.p) : static_cast<void*>(y_f32.p);
  a.rows = rows;
  a.in = in;
  a.out = out;
  const GemvIn im = norm ? GemvIn::kRmsNorm : GemvIn::kBf16;
  const GemvOut om = swiglu ? GemvOut::kSwiGlu : mode == GemvMode::kAddF32 ? GemvOut::kAddF32 : GemvOut::kF32;
  a.x_norm = x_norm.p;
  GemvPlan plan;
  MmaLinearPlan mplan;
  if (mma && !cublas) {
    a.w = w.p;
    mplan = mma_linear_plan(a, om, bn, split);
    b.bn = mplan.bn, b.split = mplan.split, b.grid = mplan.grid;
  } else if (!cublas) {
    a.w = w.p;
    plan = gemv_plan(a, im, om, n_tiles, warps);
    if (grid > 0) plan.grid = grid;
    b.n_tiles = plan.n_tiles, b.warps = plan.warps, b.grid = plan.grid;
  }
  auto enqueue = [&](cudaStream_t s) {
    for (int i = 0; i < b.launches; ++i) {
      const __nv_bfloat16* wi = w.p + w_elems * size_t(i % b.copies);
      if (cublas) {
        gemm->linear(x_bf16.p, wi, swiglu ? static_cast<void*>(y_bf16.p) : static_cast<void*>(y_f32.p), !swiglu, rows,
                     in, swiglu ? 2 * out : out, s);
      } else if (mma) {
        a.w = wi;
        cuda::mma_linear(a, im, om, s, &mplan);
      } else {
        a.w = wi;
        cuda::gemv(a, im, om, s, &plan);
      }
    }
  };
  fill_times(b, time_graph(enqueue, repeats), b.launches);
  return b;
}

GemvBench layer_chain_bench(bool fused, int rows, int hidden, int q_dim, int kv_dim, int inter, int layers,
                            int repeats, bool mma) {
  const int h = hidden, qkv = q_dim + 2 * kv_dim;
  const size_t n_qkv = size_t(qkv) * h, n_o = size_t(h) * q_dim, n_gu = size_t(2 * inter) * h,
               n_down = size_t(h) * inter;
  GemvBench b;
  b.weight_bytes = double(n_qkv + n_o + n_gu + n_down) * 2;
  b.copies = layers;
  b.launches = layers * (fused ? (mma ? 6 : 4) : 7);
  // Per layer: weights (L, ...) and norm weights (L, h).
  Dev<__nv_bfloat16> w_qkv(n_qkv * layers), w_o(n_o * layers), w_gu(n_gu * layers), w_down(n_down * layers);
  Dev<__nv_bfloat16> norm1(size_t(h) * layers), norm2(size_t(h) * layers);
  fill(w_qkv, 0x3A), fill(w_o, 0x3A), fill(w_gu, 0x3A), fill(w_down, 0x3A), fill(norm1, 0x3F), fill(norm2, 0x3F);
  // Activations: residual f32 (rows, h); hnorm bf16 (rows, h); qkv f32 (rows, qkv); attn bf16
  // (rows, q) stands in for attention's output; gate_up bf16 (rows, 2I); act bf16 (rows, I).
  Dev<float> residual(size_t(rows) * h), qkv_out(size_t(rows) * qkv);
  Dev<__nv_bfloat16> hnorm(size_t(rows) * h), attn(size_t(rows) * q_dim), gate_up(size_t(rows) * 2 * inter),
      act(size_t(rows) * inter);
  fill(residual, 0x3A), fill(attn, 0x3A), fill(act, 0x3A);
  Dev<unsigned char> ws(fused ? 0 : kBenchWorkspaceBytes);
  std::unique_ptr<Gemm> gemm = fused ? nullptr : std::make_unique<Gemm>(ws.p, ws.n);
  const float eps = 1e-6f;
  auto enqueue = [&](cudaStream_t s) {
    for (int l = 0; l < layers; ++l) {
      const __nv_bfloat16* wq = w_qkv.p + n_qkv * l;
      const __nv_bfloat16* wo = w_o.p + n_o * l;
      const __nv_bfloat16* wg = w_gu.p + n_gu * l;
      const __nv_bfloat16* wd = w_down.p + n_down * l;
      const __nv_bfloat16* n1 = norm1.p + size_t(h) * l;
      const __nv_bfloat16* n2 = norm2.p + size_t(h) * l;
      if (fused) {
        GemvArgs g;
        g.rows = rows;
        g.eps = eps;
        auto call = [&](const void* x, const __nv_bfloat16* nw, const __nv_bfloat16* w, void* y, int in, int out,
                        GemvIn im, GemvOut om) {
          g.x = x, g.norm_w = nw, g.w = w, g.y = y, g.in = in, g.out = out, g.x_norm = hnorm.p;
          if (mma) {
            cuda::mma_linear(g, im, om, s);
          } else {
            cuda::gemv(g, im, om, s);
          }
        };
        call(residual.p, n1, wq, qkv_out.p, h, qkv, GemvIn::kRmsNorm, GemvOut::kF32);
        call(attn.p, nullptr, wo, residual.p, q_dim, h, GemvIn::kBf16, GemvOut::kAddF32);
        call(residual.p, n2, wg, act.p, h, inter, GemvIn::kRmsNorm, GemvOut::kSwiGlu);
        call(act.p, nullptr, wd, residual.p, inter, h, GemvIn::kBf16, GemvOut::kAddF32);
      } else {
        cuda::rms_norm(residual.p, n1, hnorm.p, nullptr, rows, h, eps, s);
        gemm->linear(hnorm.p, wq, qkv_out.p, true, rows, h, qkv, s);
        gemm->linear(attn.p, wo, residual.p, true, rows, q_dim, h, s, false, /*accumulate=*/true);
        cuda::rms_norm(residual.p, n2, hnorm.p, nullptr, rows, h, eps, s);
        gemm->linear(hnorm.p, wg, gate_up.p, false, rows, h, 2 * inter, s);
        cuda::silu_mul(gate_up.p, act.p, rows, inter, s);
        gemm->linear(act.p, wd, residual.p, true, rows, inter, h, s, false, /*accumulate=*/true);
      }
    }
  };
  fill_times(b, time_graph(enqueue, repeats), layers);
  return b;
}

bool pdl_enabled() { return cuda::pdl_enabled(); }

// ---- end of the GEMV block ----

std::vector<int32_t> argmax(const std::vector<float>& logits, int rows, int vocab) {
  std::unique_ptr<Dev<float>> dl(up_f32(logits));
  Dev<float> pv(size_t(rows) * kArgmaxChunks);
  Dev<int32_t> pi(size_t(rows) * kArgmaxChunks);
  Dev<int32_t> out{static_cast<size_t>(rows)};
  CUDA_CHECK(cudaMemset(out.p, 0xff, size_t(rows) * 4));
  argmax_rows(dl->p, pv.p, pi.p, out.p, rows, vocab, 0);
  std::vector<int32_t> h(static_cast<size_t>(rows));
  CUDA_CHECK(cudaDeviceSynchronize());
  CUDA_CHECK(cudaMemcpy(h.data(), out.p, h.size() * 4, cudaMemcpyDeviceToHost));
  return h;
}

std::vector<int32_t> sample(const std::vector<float>& logits, const std::vector<SampleRow>& rows, int vocab) {
  std::unique_ptr<Dev<float>> dl(up_f32(logits));
  std::vector<SampleParamsDev> p(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) p[i] = {rows[i].temperature, rows[i].top_p, rows[i].top_k, rows[i].u};
  Dev<SampleParamsDev> dp(p.size());
  CUDA_CHECK(cudaMemcpy(dp.p, p.data(), p.size() * sizeof(SampleParamsDev), cudaMemcpyHostToDevice));
  Dev<int32_t> out(rows.size());
  CUDA_CHECK(cudaMemset(out.p, 0xff, rows.size() * 4));
  sample_tokens(dl->p, dp.p, out.p, static_cast<int>(rows.size()), vocab, 0);
  std::vector<int32_t> h(rows.size());
  CUDA_CHECK(cudaDeviceSynchronize());
  CUDA_CHECK(cudaMemcpy(h.data(), out.p, h.size() * 4, cudaMemcpyDeviceToHost));
  return h;
}

// ---- Decode attention (decode_attention.cu): launches on shared buffers, benchmark ----

// The output, partials and zeroed merge counters of decode_attention over t tokens, and `args`
// pointing at them with the shape filled in; q, the caches, positions and block tables are the
// caller's to set.
struct DecodeIo {
  Dev<__nv_bfloat16> out;
  Dev<float> po, pml;
  Dev<int32_t> counters;
  DecodeAttentionArgs args;

  DecodeIo(int t, int n_heads, int n_kv_heads, int head_dim, int block_size, int max_blocks_per_seq,
           int partition_size)
      : out(size_t(t) * size_t(n_heads * head_dim)),
        po(size_t(CEIL_DIV(max_blocks_per_seq * block_size, partition_size)) * size_t(t) * size_t(n_heads * head_dim)),
        pml(size_t(CEIL_DIV(max_blocks_per_seq * block_size, partition_size)) * size_t(t) * size_t(n_heads) * 2),
        counters(size_t(t) * size_t(n_kv_heads)) {
    CUDA_CHECK(cudaMemset(counters.p, 0, counters.n * sizeof(int32_t)));
    args.out = out.p;
    args.max_blocks_per_seq = max_blocks_per_seq;
    args.num_tokens = t;
    args.n_heads = n_heads;
    args.n_kv_heads = n_kv_heads;
    args.head_dim = head_dim;
    args.block_size = block_size;
    args.scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
    args.partition_size = partition_size;
    args.max_partitions = CEIL_DIV(max_blocks_per_seq * block_size, partition_size);
    args.partial_o = po.p;
    args.partial_ml = pml.p;
    args.counters = counters.p;
  }
};

std::vector<std::vector<float>> decode_attention_launches(const std::vector<float>& q,
                                                          const std::vector<float>& k_cache,
                                                          const std::vector<float>& v_cache,
                                                          const std::vector<std::vector<int32_t>>& positions_per_launch,
                                                          const std::vector<int32_t>& block_tables,
                                                          int max_blocks_per_seq, int n_heads, int n_kv_heads,
                                                          int head_dim, int block_size, int partition_size,
                                                          int warps, int cluster) {
  auto dq = up_bf16(q);
  auto dk = up_bf16(k_cache);
  auto dv = up_bf16(v_cache);
  auto dbt = up_i32(block_tables);
  const int t = static_cast<int>(positions_per_launch.at(0).size());
  Dev<int32_t> dpos(static_cast<size_t>(t));
  DecodeIo io(t, n_heads, n_kv_heads, head_dim, block_size, max_blocks_per_seq, partition_size);
  DecodeAttentionArgs& a = io.args;
  a.q = dq->p;
  a.k_cache = dk->p;
  a.v_cache = dv->p;
  a.positions = dpos.p;
  a.block_tables = dbt->p;
  a.warps = warps;
  a.cluster = cluster > 1 ? cluster : 0;
  std::vector<std::vector<float>> outs;
  for (const std::vector<int32_t>& positions : positions_per_launch) {
    CUDA_SHAPE_CHECK(static_cast<int>(positions.size()) == t);
    CUDA_CHECK(cudaMemcpy(dpos.p, positions.data(), positions.size() * 4, cudaMemcpyHostToDevice));
    io.out.poison();
    io.po.poison();
    io.pml.poison();
    cuda::decode_attention(a, 0);
    outs.push_back(down_bf16(io.out));
  }
  return outs;
}

int decode_one_block_warps(int num_tokens, int n_kv_heads, int max_kv_len) {
  return cuda::decode_one_block_warps(num_tokens, n_kv_heads, max_kv_len);
}

DecodeAttentionBench decode_attention_bench(int n_heads, int n_kv_heads, int head_dim, int batch, int ctx,
                                            int max_kv_len, int repeats, uint32_t seed, int partition,
                                            int warps, int cluster, int cluster_min_tiles) {
  constexpr int kBlockSize = 16, kLaunchesPerGraph = 20, kWarmupReplays = 3;
  constexpr size_t kCopiesBytes = size_t(4) << 30;  // KV copies in all, so consecutive launches miss L2
  constexpr size_t kFlushBytes = size_t(256) << 20;  // written before each replay: evicts L2
  CUDA_SHAPE_CHECK(ctx >= 1 && max_kv_len >= ctx && repeats >= 1);
  int sms = 0;
  CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  const int blocks_per_seq = CEIL_DIV(ctx, kBlockSize);
  const int max_blocks = CEIL_DIV(max_kv_len, kBlockSize);
  const int num_blocks = batch * blocks_per_seq;
  const size_t layer_elems = size_t(num_blocks) * size_t(n_kv_heads) * kBlockSize * size_t(head_dim);
  const int copies = static_cast<int>(
      std::clamp<size_t>(kCopiesBytes / (2 * layer_elems * sizeof(__nv_bfloat16)), 1, kLaunchesPerGraph));

  // Random bf16 in [-1, 1) from a small host pattern, tiled over every cache copy.
  uint64_t state = 0x9e3779b97f4a7c15ull ^ seed;
  auto next = [&state]() {
    state ^= state << 13, state ^= state >> 7, state ^= state << 17;
    return state;
  };
  std::vector<uint16_t> pattern(size_t(1) << 22);
  for (uint16_t& v : pattern) v = f32_to_bf16(static_cast<float>(next() >> 40) / float(1 << 23) - 1.f);
  Dev<__nv_bfloat16> kv(2 * size_t(copies) * layer_elems);
  for (size_t off = 0; off < kv.n; off += pattern.size()) {
    const size_t n = std::min(pattern.size(), kv.n - off);
    CUDA_CHECK(cudaMemcpy(kv.p + off, pattern.data(), n * 2, cudaMemcpyHostToDevice));
  }
  std::vector<float> qh(size_t(batch) * n_heads * head_dim);
  for (float& v : qh) v = static_cast<float>(next() >> 40) / float(1 << 23) - 1.f;
  auto dq = up_bf16(qh);

  // Cache blocks in a random order: block b of sequence s is perm[s * blocks_per_seq + b].
  std::vector<int32_t> perm(static_cast<size_t>(num_blocks));
  for (int i = 0; i < num_blocks; ++i) perm[size_t(i)] = i;
  for (int i = num_blocks - 1; i > 0; --i) std::swap(perm[size_t(i)], perm[next() % uint64_t(i + 1)]);
  std::vector<int32_t> tables(size_t(batch) * max_blocks, 0), positions(size_t(batch), ctx - 1);
  for (int s = 0; s < batch; ++s)
    for (int b = 0; b < blocks_per_seq; ++b)
      tables[size_t(s) * max_blocks + b] = perm[size_t(s) * blocks_per_seq + b];
  auto dbt = up_i32(tables);
  auto dpos = up_i32(positions);

  DecodeAttentionBench r;
  r.warps = warps > 0 ? warps : decode_warps(batch, n_kv_heads);
  r.cluster = cluster > 0 ? cluster : decode_cluster(batch, n_kv_heads, max_blocks * kBlockSize);
  if (r.cluster > 1 && !decode_cluster_ok(r.cluster, r.warps, max_blocks * kBlockSize)) r.cluster = 1;  // forced
  r.partition_size = partition > 0 && r.cluster == 1 ? partition
                                                     : decode_partition_size(batch, n_kv_heads, max_kv_len, sms);
  r.max_partitions = CEIL_DIV(max_blocks * kBlockSize, r.partition_size);
  r.kv_bytes = 2.0 * double(batch) * ctx * n_kv_heads * head_dim * sizeof(__nv_bfloat16);
  Dev<unsigned char> flush(kFlushBytes);
  DecodeIo io(batch, n_heads, n_kv_heads, head_dim, kBlockSize, max_blocks, r.partition_size);
  DecodeAttentionArgs& a = io.args;
  a.q = dq->p;
  a.positions = dpos->p;
  a.block_tables = dbt->p;
  a.warps = warps;
  a.fixed_partition = partition;  // a forced partition holds for every context, also <= 512
  a.cluster = r.cluster > 1 ? r.cluster : 0;
  a.cluster_min_tiles = cluster_min_tiles;
  auto set_copy = [&](int i) {
    a.k_cache = kv.p + 2 * size_t(i % copies) * layer_elems;
    a.v_cache = a.k_cache + layer_elems;
  };

  cudaStream_t stream = nullptr;
  CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  set_copy(0);
  cuda::decode_attention(a, stream);  // eager first: sets the kernel's shared-memory limit
  CUDA_CHECK(cudaStreamSynchronize(stream));
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  for (int i = 0; i < kLaunchesPerGraph; ++i) {
    set_copy(i);
    cuda::decode_attention(a, stream);
  }
  CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  cudaEvent_t start = nullptr, stop = nullptr;
  CUDA_CHECK(cudaEventCreate(&start));
  CUDA_CHECK(cudaEventCreate(&stop));
  std::vector<double> us;
  for (int i = 0; i < kWarmupReplays + repeats; ++i) {
    CUDA_CHECK(cudaMemsetAsync(flush.p, i & 0xff, kFlushBytes, stream));
    CUDA_CHECK(cudaEventRecord(start, stream));
    CUDA_CHECK(cudaGraphLaunch(exec, stream));
    CUDA_CHECK(cudaEventRecord(stop, stream));
    CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0.f;
    CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    if (i >= kWarmupReplays) us.push_back(1000.0 * ms / kLaunchesPerGraph);
  }
  std::sort(us.begin(), us.end());
  r.us_median = us[us.size() / 2];
  r.us_min = us.front();
  r.us_max = us.back();
  r.kv_copies = copies;
  CUDA_CHECK(cudaEventDestroy(start));
  CUDA_CHECK(cudaEventDestroy(stop));
  CUDA_CHECK(cudaGraphExecDestroy(exec));
  CUDA_CHECK(cudaGraphDestroy(graph));
  CUDA_CHECK(cudaStreamDestroy(stream));
  return r;
}

}  // namespace mpserve::backend::cuda::test_api
