#include "backend/cuda/kernel_test_api.h"

#include <cmath>
#include <algorithm>
#include <limits>
#include <memory>

#include "backend/cuda/activation.cuh"
#include "backend/cuda/attention.cuh"
#include "backend/cuda/cuda_check.cuh"
#include "backend/cuda/embedding.cuh"
#include "backend/cuda/gemm.h"
#include "backend/cuda/gemv.cuh"
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

}  // namespace

bool gpu_available() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

std::vector<float> add_rms_norm(std::vector<float>& residual, const std::vector<float>& delta,
                                const std::vector<float>& weight, const std::vector<int32_t>& row_index, int rows,
                                int hidden, float eps) {
  std::unique_ptr<Dev<float>> res(up_f32(residual));
  std::unique_ptr<Dev<float>> del(delta.empty() ? nullptr : up_f32(delta));
  auto w = up_bf16(weight);
  auto idx = row_index.empty() ? nullptr : up_i32(row_index);
  const int out_rows = row_index.empty() ? rows : static_cast<int>(row_index.size());
  Dev<__nv_bfloat16> out(size_t(out_rows) * size_t(hidden));
  out.poison();
  cuda::add_rms_norm(res->p, del ? del->p : nullptr, w->p, out.p, idx ? idx->p : nullptr, out_rows, hidden, eps, 0);
  residual = down_f32(*res);
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

std::vector<float> linear(const std::vector<float>& x, const std::vector<float>& w, int rows, int in, int out) {
  auto dx = up_bf16(x);
  auto dw = up_bf16(w);
  Dev<float> y(size_t(rows) * size_t(out));
  y.poison();
  Dev<unsigned char> ws(size_t{4} << 20);
  {
    Gemm g(ws.p, ws.n);
    g.linear(dx->p, dw->p, y.p, true, rows, in, out, 0);
    CUDA_CHECK(cudaDeviceSynchronize());
  }
  return down_f32(y);
}

QkvRopeOut qkv_rope(const std::vector<float>& qkv, const std::vector<float>& bias, const std::vector<float>& q_norm,
                    const std::vector<float>& k_norm, const std::vector<float>& inv_freq,
                    const std::vector<int32_t>& positions, const std::vector<int32_t>& slots, int num_blocks,
                    int n_heads, int n_kv_heads, int head_dim, int block_size, float eps) {
  std::unique_ptr<Dev<float>> dqkv(up_f32(qkv)), dinv(up_f32(inv_freq));
  auto dbias = bias.empty() ? nullptr : up_bf16(bias);
  auto dqn = q_norm.empty() ? nullptr : up_bf16(q_norm);
  auto dkn = k_norm.empty() ? nullptr : up_bf16(k_norm);
  auto dpos = up_i32(positions);
  auto dslot = up_i32(slots);
  const int t = static_cast<int>(positions.size());
  Dev<__nv_bfloat16> q(size_t(t) * size_t(n_heads * head_dim));
  const size_t cache = size_t(num_blocks) * size_t(n_kv_heads) * size_t(block_size) * size_t(head_dim);
  Dev<__nv_bfloat16> kc(cache), vc(cache);
  q.poison();
  kc.poison();
  vc.poison();
  QkvRopeArgs a;
  a.qkv = dqkv->p;
  a.bias = dbias ? dbias->p : nullptr;
  a.q_norm = dqn ? dqn->p : nullptr;
  a.k_norm = dkn ? dkn->p : nullptr;
  a.inv_freq = dinv->p;
  a.positions = dpos->p;
  a.slot_mapping = dslot->p;
  a.q_out = q.p;
  a.k_cache = kc.p;
  a.v_cache = vc.p;
  a.num_tokens = t;
  a.n_heads = n_heads;
  a.n_kv_heads = n_kv_heads;
  a.head_dim = head_dim;
  a.block_size = block_size;
  a.eps = eps;
  qkv_rope_cache_write(a, 0);
  return QkvRopeOut{down_bf16(q), down_bf16(kc), down_bf16(vc)};
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

std::vector<float> gemv(GemvMode mode, const std::vector<float>& x, const std::vector<float>& norm_w,
                        const std::vector<float>& w, const std::vector<float>& y_init, int rows, int in, int out,
                        float eps) {
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
  if (mode == GemvMode::kNormSwiGlu) {
    Dev<__nv_bfloat16> y(size_t(rows) * size_t(out));
    y.poison();
    a.y = y.p;
    cuda::gemv(a, GemvIn::kRmsNorm, GemvOut::kSwiGlu, 0);
    return down_bf16(y);
  }
  std::unique_ptr<Dev<float>> y(mode == GemvMode::kAddF32 ? up_f32(y_init) : new Dev<float>(size_t(rows) * size_t(out)));
  if (mode != GemvMode::kAddF32) y->poison();
  a.y = y->p;
  cuda::gemv(a, norm ? GemvIn::kRmsNorm : GemvIn::kBf16, mode == GemvMode::kAddF32 ? GemvOut::kAddF32 : GemvOut::kF32, 0);
  return down_f32(*y);
}

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

std::vector<std::vector<float>> decode_attention_launches(const std::vector<float>& q,
                                                          const std::vector<float>& k_cache,
                                                          const std::vector<float>& v_cache,
                                                          const std::vector<std::vector<int32_t>>& positions_per_launch,
                                                          const std::vector<int32_t>& block_tables,
                                                          int max_blocks_per_seq, int n_heads, int n_kv_heads,
                                                          int head_dim, int block_size, int partition_size) {
  auto dq = up_bf16(q);
  auto dk = up_bf16(k_cache);
  auto dv = up_bf16(v_cache);
  auto dbt = up_i32(block_tables);
  const int t = static_cast<int>(positions_per_launch.at(0).size());
  const int parts = CEIL_DIV(max_blocks_per_seq * block_size, partition_size);
  Dev<int32_t> dpos(static_cast<size_t>(t));
  Dev<__nv_bfloat16> out(size_t(t) * size_t(n_heads * head_dim));
  Dev<float> po(size_t(parts) * size_t(t) * size_t(n_heads * head_dim));
  Dev<float> pml(size_t(parts) * size_t(t) * size_t(n_heads) * 2);
  Dev<int32_t> counters(size_t(t) * size_t(n_kv_heads));
  CUDA_CHECK(cudaMemset(counters.p, 0, counters.n * sizeof(int32_t)));
  DecodeAttentionArgs a;
  a.q = dq->p;
  a.k_cache = dk->p;
  a.v_cache = dv->p;
  a.out = out.p;
  a.positions = dpos.p;
  a.block_tables = dbt->p;
  a.max_blocks_per_seq = max_blocks_per_seq;
  a.num_tokens = t;
  a.n_heads = n_heads;
  a.n_kv_heads = n_kv_heads;
  a.head_dim = head_dim;
  a.block_size = block_size;
  a.scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  a.partition_size = partition_size;
  a.max_partitions = parts;
  a.partial_o = po.p;
  a.partial_ml = pml.p;
  a.counters = counters.p;
  std::vector<std::vector<float>> outs;
  for (const std::vector<int32_t>& positions : positions_per_launch) {
    CUDA_SHAPE_CHECK(static_cast<int>(positions.size()) == t);
    CUDA_CHECK(cudaMemcpy(dpos.p, positions.data(), positions.size() * 4, cudaMemcpyHostToDevice));
    out.poison();
    po.poison();
    pml.poison();
    cuda::decode_attention(a, 0);
    outs.push_back(down_bf16(out));
  }
  return outs;
}

DecodeAttentionBench decode_attention_bench(int n_heads, int n_kv_heads, int head_dim, int batch, int ctx,
                                            int max_kv_len, int repeats, uint32_t seed) {
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
  r.partition_size = decode_partition_size(batch, n_kv_heads, max_kv_len, sms);
  r.max_partitions = CEIL_DIV(max_blocks * kBlockSize, r.partition_size);
  r.kv_bytes = 2.0 * double(batch) * ctx * n_kv_heads * head_dim * sizeof(__nv_bfloat16);
  Dev<__nv_bfloat16> out(size_t(batch) * n_heads * head_dim);
  Dev<float> po(size_t(r.max_partitions) * batch * n_heads * head_dim);
  Dev<float> pml(size_t(r.max_partitions) * batch * n_heads * 2);
  Dev<int32_t> counters(size_t(batch) * n_kv_heads);
  CUDA_CHECK(cudaMemset(counters.p, 0, counters.n * sizeof(int32_t)));
  Dev<unsigned char> flush(kFlushBytes);
  DecodeAttentionArgs a;
  a.q = dq->p;
  a.out = out.p;
  a.positions = dpos->p;
  a.block_tables = dbt->p;
  a.max_blocks_per_seq = max_blocks;
  a.num_tokens = batch;
  a.n_heads = n_heads;
  a.n_kv_heads = n_kv_heads;
  a.head_dim = head_dim;
  a.block_size = kBlockSize;
  a.scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  a.partition_size = r.partition_size;
  a.max_partitions = r.max_partitions;
  a.partial_o = po.p;
  a.partial_ml = pml.p;
  a.counters = counters.p;
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
