// The CUDA backend: bf16 weights and KV cache, cuBLASLt GEMMs, own kernels for the rest, CUDA
// graphs for decode-only steps.
#include "backend/cuda/cuda_backend.h"

#include <cstdio>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <tuple>
#include <vector>

#include "backend/cuda/activation.cuh"
#include "backend/cuda/attention.cuh"
#include "backend/cuda/ceilings.cuh"
#include "backend/cuda/cuda_check.cuh"
#include "backend/cuda/device_memory.h"
#include "backend/cuda/embedding.cuh"
#include "backend/cuda/gemm.h"
#include "backend/cuda/fault.cuh"
#include "backend/cuda/gemv.cuh"
#include "backend/cuda/mma_linear.cuh"
#include "backend/cuda/kernel_profiler.h"
#include "backend/cuda/qkv_rope.cuh"
#include "backend/cuda/rms_norm.cuh"
#include "backend/cuda/sampler.cuh"
#include "backend/cuda/weights_upload.h"
#include "common/check.h"
#include "common/env.h"
#include "common/log.h"

namespace mpserve::backend::cuda {
namespace {

constexpr size_t kWorkspaceBytes = size_t{32} << 20;
// note: device memory this process uses outside its counted allocations (CUDA context, loaded
// modules, cuBLASLt internals, graph executables). Counted against gpu_memory_fraction.
constexpr size_t kUncountedReserveBytes = size_t{768} << 20;
// Left free on the device after the KV cache is allocated, whatever the fraction allows.
constexpr size_t kFreeMarginBytes = size_t{256} << 20;
constexpr int kMaxSplits = 16;
constexpr int kMinKeysPerSplit = 256;

size_t align16(size_t x) { return (x + 15) / 16 * 16; }

// One pinned host buffer and its device twin holding every per-step input at fixed offsets, so
// a step needs one cudaMemcpyAsync and captured graphs read fixed addresses. The block tables
// come last: a step copies only the rows it uses.
struct StagingLayout {
  size_t tokens = 0;        // int32 (max_tokens)
  size_t positions = 0;     // int32 (max_tokens)
  size_t slots = 0;         // int32 (max_tokens) KV slot per token, -1 for padding
  size_t sample_rows = 0;   // int32 (max_seqs) token index of each sampled position
  size_t items = 0;         // int32x4 (max_tokens) attention work items
  size_t params = 0;        // SampleParamsDev (max_seqs)
  size_t gather = 0;        // int32x2 (max_seqs): (token index, row of the step before) per launched-ahead input
  size_t block_tables = 0;  // int32 (max_seqs, max_blocks)
  size_t total = 0;

  StagingLayout(int max_tokens, int max_seqs, int max_blocks) {
    size_t o = 0;
    auto take = [&](size_t bytes) {
      const size_t at = o;
      o = align16(o + bytes);
      return at;
    };
    tokens = take(4 * size_t(max_tokens));
    positions = take(4 * size_t(max_tokens));
    slots = take(4 * size_t(max_tokens));
    sample_rows = take(4 * size_t(max_seqs));
    items = take(16 * size_t(max_tokens));
    params = take(sizeof(SampleParamsDev) * size_t(max_seqs));
    gather = take(8 * size_t(max_seqs));
    block_tables = take(4 * size_t(max_seqs) * size_t(max_blocks));
    total = o;
  }
};

struct LayerDev {
  __nv_bfloat16* input_norm = nullptr;  // (H)
  // note: q and k rows (and bias entries) of qkv in the RoPE pair layout (qkv_rope.cuh), so the
  // fused GEMV rotates pairs in its accumulator registers; every path reads this one copy.
  __nv_bfloat16* qkv = nullptr;         // (Q + 2K, H) q_proj, k_proj, v_proj stacked
  __nv_bfloat16* qkv_bias = nullptr;    // (Q + 2K) or null
  __nv_bfloat16* q_norm = nullptr;      // (D) or null
  __nv_bfloat16* k_norm = nullptr;      // (D) or null
  __nv_bfloat16* o = nullptr;           // (H, Q)
  __nv_bfloat16* post_norm = nullptr;   // (H)
  __nv_bfloat16* gate_up = nullptr;     // (2I, H) gate_proj, up_proj stacked
  __nv_bfloat16* down = nullptr;        // (H, I)
};

// The shape of one forward pass; everything else is read from the staging buffer.
struct StepShape {
  int tokens = 0;   // T, padding included
  int items = 0;    // attention work items
  int sampled = 0;  // rows through the final norm, LM head and sampler
  int splits = 1;   // attention split-K (general kernel)
  bool decode = false;     // decode-only: token i is sequence i's only token, every row sampled
  bool greedy = false;     // every sampled row greedy: argmax instead of the sampler
  int partition = 0;       // decode attention keys per block (0: general kernel)
  int max_partitions = 0;
  int cluster = 0;         // decode attention cluster mode's size (0 or 1: the partition path)
  int one_block_warps = 0;  // > 0: decode attention's one block per (sequence, kv head) (decode_one_block_warps)
  int max_kv_len = 0;       // one-block steps: the step's longest sequence (keys); else 0
};

class CudaBackend final : public Backend {
 public:
  CudaBackend(const model::ModelWeights& w, const BackendOptions& opts, int device)
      : w_(w), c_(w.config), opts_(opts), device_(device) {}
  ~CudaBackend() override;

  Status init();

  std::string_view name() const override { return "cuda"; }
  const model::ModelConfig& config() const override { return c_; }
  int32_t num_kv_blocks() const override { return num_blocks_; }
  int32_t block_size() const override { return opts_.block_size; }
  void step(const Batch& batch, bool want_logits, StepOutput* out) override;
  void launch(const Batch& batch, bool want_logits) override;
  void collect(StepOutput* out) override;
  bool launch_is_async() const override { return true; }
  // note: one while profiling: the kernel profiler times one step at a time (launch to collect).
  int max_steps_in_flight() const override { return profiling_ ? 1 : 2; }
  StepTimings last_step_timings() const override { return last_timings_; }
  [[noreturn]] void debug_inject_fault() override {
    std::fprintf(stderr, "mpserve: injecting a device fault (--debug-fault-after-requests)\n");
    launch_illegal_address_write(stream_);
    cudaError_t e = cudaStreamSynchronize(stream_);
    std::fprintf(stderr, "mpserve: CUDA error after injected fault: %s (%s)\n", cudaGetErrorName(e),
                 cudaGetErrorString(e));
    std::fflush(stderr);
    std::abort();
  }
  Result<DeviceCeilings> measure_ceilings() const override;
  bool set_kernel_profiling(bool on) const override {
    if (on) profiler_.clear();
    profiling_ = on;
    return true;
  }
  std::vector<KernelTime> kernel_profile() const override { return profiler_.report(); }

 private:
  void upload_weights();
  void allocate_activations();
  void allocate_kv(int64_t num_blocks);
  void warm_up();
  int bucket_for(int num_seqs) const;
  int splits_for(int num_seqs, int max_kv_len) const;
  int partition_for(int bucket) const;
  bool decode_kernel_ok() const {
    return c_.num_heads / c_.num_kv_heads <= kDecodeMaxGroup && opts_.block_size % 16 == 0;
  }
  void forward(const StepShape& s);
  template <typename T>
  T* dev(size_t offset) const {
    return reinterpret_cast<T*>(staging_dev_ + offset);
  }
  template <typename T>
  T* host(size_t offset) const {
    return reinterpret_cast<T*>(staging_host_ + offset);
  }

  const model::ModelWeights& w_;
  const model::ModelConfig& c_;
  BackendOptions opts_;
  int device_;
  int num_sms_ = 0;
  // Decode attention may use cluster mode (MPSERVE_CUDA_CLUSTER_ATTENTION, default on).
  bool cluster_attention_ = env::get_string(env::kCudaClusterAttention, "1") != "0";
  bool one_block_attention_ = env::get_string(env::kCudaOneBlockAttention, "1") != "0";
  cudaStream_t stream_ = nullptr;
  DeviceMemory mem_;
  std::unique_ptr<Gemm> gemm_;
  int max_tokens_ = 0;  // activation rows: max_num_batched_tokens, or the largest decode bucket
  int max_blocks_ = 0;  // block-table row length: ceil(max_model_len / block_size)
  int tokens_per_item_ = 1;
  std::vector<int> buckets_;  // decode batch sizes with a graph each
  int max_splits_rows_ = 0;   // max over buckets of splits * bucket

  // Weights (bf16), shapes as in model/weights.h.
  __nv_bfloat16* embed_ = nullptr;       // (V, H)
  __nv_bfloat16* final_norm_ = nullptr;  // (H)
  __nv_bfloat16* lm_head_ = nullptr;     // (V, H), == embed_ when tied
  std::vector<LayerDev> layers_;
  float* inv_freq_ = nullptr;            // (D/2)

  // KV cache: per layer K then V, each (num_blocks, n_kv_heads, block_size, D) bf16.
  __nv_bfloat16* kv_ = nullptr;
  int32_t num_blocks_ = 0;
  size_t kv_layer_elems_ = 0;

  // Activations, T = max_tokens_, S = max_num_seqs.
  float* residual_ = nullptr;           // (T, H) f32 residual stream
  __nv_bfloat16* hnorm_ = nullptr;      // (T, H) normed block input
  float* qkv_ = nullptr;                // (T, Q + 2K) f32, q and k in the RoPE pair layout
  __nv_bfloat16* q_ = nullptr;          // (T, Q) roped queries
  __nv_bfloat16* attn_ = nullptr;       // (T, Q)
  __nv_bfloat16* gate_up_ = nullptr;    // (T, 2I)
  __nv_bfloat16* act_ = nullptr;        // (T, I)
  float* partial_o_ = nullptr;          // (max_splits_rows_, n_heads, D)
  float* partial_ml_ = nullptr;         // (max_splits_rows_, n_heads, 2)
  int32_t* decode_counters_ = nullptr;  // (largest decode bucket, n_kv_heads), zero between launches
  __nv_bfloat16* final_h_ = nullptr;    // (S, H)
  float* logits_ = nullptr;             // (S, V)
  int32_t* out_tokens_ = nullptr;       // (S)
  void* workspace_ = nullptr;           // cuBLASLt
  void* l2_flush_ = nullptr;            // GEMM tuner scratch (gemm.h), l2_bytes_
  size_t l2_bytes_ = 0;

  std::unique_ptr<StagingLayout> layout_;
  unsigned char* staging_host_ = nullptr;  // pinned
  unsigned char* staging_dev_ = nullptr;
  int32_t* out_tokens_host_ = nullptr;     // pinned (2, S): alternating, one per step in flight
  // What each row of the staging block tables holds (host and device copies alike): launch()
  // packs only the ids a sequence appended since its row was last written (BatchEntry::table_epoch).
  struct TableRow {
    int64_t seq_id = kPaddingRow - 1;  // matches no sequence
    uint32_t epoch = 0;
    int32_t n = 0;  // ids of the table packed into the row
  };
  static constexpr int64_t kPaddingRow = std::numeric_limits<int64_t>::min() + 1;  // a padding row: id 0 at 0
  std::vector<TableRow> table_rows_;

  float* argmax_val_ = nullptr;         // (S, kArgmaxChunks)
  int32_t* argmax_idx_ = nullptr;       // (S, kArgmaxChunks)

  // Decode-step graphs by (bucket, decode attention's one-block warps or 0, every row greedy).
  std::map<std::tuple<int, int, bool>, cudaGraphExec_t> graphs_;

  // The steps launched and not yet collected, oldest first (at most two). A step's sampled
  // tokens arrive in its half of out_tokens_host_, and its event follows its last copy.
  // note: one staging buffer is enough: a launch packs it only after the stream has consumed the
  // previous launch's copy (`staged_`), and the block-table record (table_rows_) then describes
  // both the staging buffer and the device's copy.
  struct InFlight {
    int sampled = 0;  // real (unpadded) sampled rows
    bool want_logits = false;
    int slot = 0;     // its half of out_tokens_host_ and its event in done_
    bool launched = false;  // false: an empty batch, nothing enqueued
  };
  std::vector<InFlight> in_flight_;
  cudaEvent_t done_[2] = {nullptr, nullptr};
  cudaEvent_t staged_ = nullptr;  // the stream has read the staging buffer of the last launch

  StepTimings last_timings_;
  // note: mutable because the engine hands out a const Backend; profiling changes only how a
  // step is launched (eagerly, with events), never what it computes.
  mutable bool profiling_ = false;
  // Decode steps of at most this many rows take the fused GEMV path (0 = never); tunable by
  // MPSERVE_CUDA_GEMV_MAX_ROWS so the benchmark can compare both paths in one run.
  // note: measured on an H200 (docs/results/cuda_backend.md, GemvBench layer chains, cold L2):
  // the fused path (5 launches per layer) beats cuBLASLt + norm/SiLU kernels (7) at 1..8 rows on
  // the 0.5B shape (rows 8: 23.8 vs 29.8 us per 6 layers) and at 1..4 rows on 3B and 7B, but loses
  // at 8 rows on 3B (64.2 vs 61.9) and 7B (156 vs 143), where cuBLASLt streams the large
  // matrices faster: 8 rows up to hidden 1536 (0.5B, 1.5B), 4 above.
  int gemv_max_rows_ = gemv_max_rows_from_env(c_.hidden_size);
  static int gemv_max_rows_from_env(int64_t hidden) {
    auto v = env::get(env::kCudaGemvMaxRows);
    if (!v) return hidden <= 1536 ? kGemvMaxRows : 4;
    int n = std::atoi(v->c_str());
    return n < 0 ? 0 : (n > kGemvMaxRows ? kGemvMaxRows : n);
  }
  // Decode steps above gemv_max_rows_ and at most this many rows take the same fused path on the
  // tensor-core decode linears (mma_linear.cuh); MPSERVE_CUDA_MMA_LINEAR_MAX_ROWS (0 = cuBLASLt).
  // note: measured on an H200 (docs/results/cuda_backend.md, seventh session; bench offline steps
  // at context 128 against cuBLASLt + norm/SiLU/RoPE kernels): 0.5B -12% at 12 and 16 rows, +4%
  // at 24 and 32, +25% at 64; 1.5B -13% at 12, -2% at 24; 3B -14% at 8 and 12, -5% at 24 and 32,
  // +24% at 64; 7B +1% at 8 and 12, +7% at 24. At 33..64 rows the wgmma kernel, fed by TMA since
  // the fifteenth session: 3B -2.6 to -3.5% at 40 and 48 rows, -0.2 to -2.5% at 64 (contexts
  // 128-2048); 0.5B +1.8%, 1.5B +1.4%, 7B +8.8% at 64 x 128. So: 16 rows up to hidden 1536, 64 at
  // 2048, none above.
  int mma_max_rows_ = mma_max_rows_from_env(c_.hidden_size);
  static int mma_max_rows_from_env(int64_t hidden) {
    auto v = env::get(env::kCudaMmaLinearMaxRows);
    if (!v) return hidden <= 1536 ? 16 : hidden <= 2048 ? kMmaLinearMaxRows : 0;
    int n = std::atoi(v->c_str());
    return n < 0 ? 0 : (n > kMmaLinearMaxRows ? kMmaLinearMaxRows : n);
  }
  // At GEMV row counts, these linears take the tensor-core kernel instead (its norm is a separate
  // launch); MPSERVE_CUDA_MMA_SMALL lists them ("gate_up,lm_head", "" = none).
  bool mma_small_gate_up_ = mma_small_has("gate_up");
  bool mma_small_lm_head_ = mma_small_has("lm_head");
  static bool mma_small_has(const char* name) {
    auto v = env::get(env::kCudaMmaSmall);
    const std::string list = v ? *v : std::string(kMmaSmallDefault);
    return ("," + list + ",").find("," + std::string(name) + ",") != std::string::npos;
  }
  static constexpr const char* kMmaSmallDefault = "";
  mutable KernelProfiler profiler_;
};

CudaBackend::~CudaBackend() {
  cudaSetDevice(device_);
  if (stream_) cudaStreamSynchronize(stream_);
  for (auto& [b, g] : graphs_) cudaGraphExecDestroy(g);
  gemm_.reset();
  for (cudaEvent_t e : done_)
    if (e) cudaEventDestroy(e);
  if (staged_) cudaEventDestroy(staged_);
  if (staging_host_) cudaFreeHost(staging_host_);
  if (out_tokens_host_) cudaFreeHost(out_tokens_host_);
  if (stream_) cudaStreamDestroy(stream_);
}

int CudaBackend::bucket_for(int num_seqs) const {
  for (int b : buckets_)
    if (b >= num_seqs) return b;
  return buckets_.back();
}

// note: split-K only when the grid would otherwise leave SMs idle; decode steps fix it per
// bucket (from max_model_len), so eager and graph runs of a bucket launch the same grid.
int CudaBackend::splits_for(int num_seqs, int max_kv_len) const {
  const int blocks = num_seqs * static_cast<int>(c_.num_kv_heads);
  int s = CEIL_DIV(2 * num_sms_, blocks);
  s = std::min({s, kMaxSplits, CEIL_DIV(max_kv_len, kMinKeysPerSplit)});
  return std::max(s, 1);
}

// Decode attention keys per block (decode_partition_size), fixed per bucket for the graphs.
int CudaBackend::partition_for(int bucket) const {
  return decode_partition_size(bucket, static_cast<int>(c_.num_kv_heads), opts_.max_model_len, num_sms_);
}

void CudaBackend::upload_weights() {
  const int64_t h = c_.hidden_size, q = c_.q_dim(), k = c_.kv_dim(), in = c_.intermediate_size, v = c_.vocab_size;
  WeightUploader up;
  embed_ = mem_.alloc<__nv_bfloat16>(size_t(v * h));
  up.copy(embed_, w_.embed_tokens);
  final_norm_ = mem_.alloc<__nv_bfloat16>(size_t(h));
  up.copy(final_norm_, w_.final_norm);
  if (w_.lm_head.data == w_.embed_tokens.data) {
    lm_head_ = embed_;
  } else {
    lm_head_ = mem_.alloc<__nv_bfloat16>(size_t(v * h));
    up.copy(lm_head_, w_.lm_head);
  }
  for (const model::LayerWeights& lw : w_.layers) {
    LayerDev d;
    d.input_norm = mem_.alloc<__nv_bfloat16>(size_t(h));
    up.copy(d.input_norm, lw.input_norm);
    d.qkv = mem_.alloc<__nv_bfloat16>(size_t((q + 2 * k) * h));
    up.copy(d.qkv, lw.q_proj, c_.head_dim);
    up.copy(d.qkv + q * h, lw.k_proj, c_.head_dim);
    up.copy(d.qkv + (q + k) * h, lw.v_proj);
    if (!lw.q_bias.empty() || !lw.k_bias.empty() || !lw.v_bias.empty()) {
      d.qkv_bias = mem_.alloc<__nv_bfloat16>(size_t(q + 2 * k));
      up.copy_or_zero(d.qkv_bias, lw.q_bias, q, c_.head_dim);
      up.copy_or_zero(d.qkv_bias + q, lw.k_bias, k, c_.head_dim);
      up.copy_or_zero(d.qkv_bias + q + k, lw.v_bias, k);
    }
    if (!lw.q_norm.empty()) {
      d.q_norm = mem_.alloc<__nv_bfloat16>(size_t(c_.head_dim));
      up.copy(d.q_norm, lw.q_norm);
    }
    if (!lw.k_norm.empty()) {
      d.k_norm = mem_.alloc<__nv_bfloat16>(size_t(c_.head_dim));
      up.copy(d.k_norm, lw.k_norm);
    }
    d.o = mem_.alloc<__nv_bfloat16>(size_t(h * q));
    up.copy(d.o, lw.o_proj);
    d.post_norm = mem_.alloc<__nv_bfloat16>(size_t(h));
    up.copy(d.post_norm, lw.post_attn_norm);
    d.gate_up = mem_.alloc<__nv_bfloat16>(size_t(2 * in * h));
    up.copy(d.gate_up, lw.gate_proj);
    up.copy(d.gate_up + in * h, lw.up_proj);
    d.down = mem_.alloc<__nv_bfloat16>(size_t(h * in));
    up.copy(d.down, lw.down_proj);
    layers_.push_back(d);
  }
  const std::vector<float> inv_freq = model::rope_inv_freq(c_);
  inv_freq_ = mem_.alloc<float>(inv_freq.size());
  CUDA_CHECK(cudaMemcpy(inv_freq_, inv_freq.data(), inv_freq.size() * sizeof(float), cudaMemcpyHostToDevice));
}

void CudaBackend::allocate_activations() {
  const size_t t = size_t(max_tokens_), s = size_t(opts_.max_num_seqs);
  const size_t h = size_t(c_.hidden_size), q = size_t(c_.q_dim()), k = size_t(c_.kv_dim());
  const size_t in = size_t(c_.intermediate_size), v = size_t(c_.vocab_size);
  residual_ = mem_.alloc<float>(t * h);
  hnorm_ = mem_.alloc<__nv_bfloat16>(t * h);
  qkv_ = mem_.alloc<float>(t * (q + 2 * k));
  q_ = mem_.alloc<__nv_bfloat16>(t * q);
  attn_ = mem_.alloc<__nv_bfloat16>(t * q);
  gate_up_ = mem_.alloc<__nv_bfloat16>(t * 2 * in);
  act_ = mem_.alloc<__nv_bfloat16>(t * in);
  partial_o_ = mem_.alloc<float>(size_t(max_splits_rows_) * q);
  partial_ml_ = mem_.alloc<float>(size_t(max_splits_rows_) * size_t(c_.num_heads) * 2);
  decode_counters_ = mem_.alloc<int32_t>(size_t(buckets_.back()) * size_t(c_.num_kv_heads));
  CUDA_CHECK(cudaMemset(decode_counters_, 0, size_t(buckets_.back()) * size_t(c_.num_kv_heads) * sizeof(int32_t)));
  final_h_ = mem_.alloc<__nv_bfloat16>(s * h);
  logits_ = mem_.alloc<float>(s * v);
  out_tokens_ = mem_.alloc<int32_t>(s);
  argmax_val_ = mem_.alloc<float>(s * kArgmaxChunks);
  argmax_idx_ = mem_.alloc<int32_t>(s * kArgmaxChunks);
  workspace_ = mem_.alloc_bytes(kWorkspaceBytes);
  // Scratch the GEMM tuner overwrites to evict the L2 between timed runs (gemm.h); allocated
  // before the KV cache is sized, so it is counted like any other activation.
  if (Gemm::tuning_enabled() && l2_bytes_ > 0) l2_flush_ = mem_.alloc_bytes(l2_bytes_);
  gemm_ = std::make_unique<Gemm>(workspace_, kWorkspaceBytes, l2_flush_, l2_flush_ ? l2_bytes_ : 0);
  layout_ = std::make_unique<StagingLayout>(max_tokens_, opts_.max_num_seqs, max_blocks_);
  staging_dev_ = static_cast<unsigned char*>(mem_.alloc_bytes(layout_->total));
  CUDA_CHECK(cudaMallocHost(&staging_host_, layout_->total));
  std::memset(staging_host_, 0, layout_->total);
  table_rows_.assign(size_t(opts_.max_num_seqs), TableRow{});
  CUDA_CHECK(cudaMallocHost(&out_tokens_host_, 2 * s * sizeof(int32_t)));
}

void CudaBackend::allocate_kv(int64_t num_blocks) {
  if (kv_) mem_.free(kv_);
  num_blocks_ = static_cast<int32_t>(num_blocks);
  kv_layer_elems_ = size_t(num_blocks) * size_t(c_.num_kv_heads) * size_t(opts_.block_size) * size_t(c_.head_dim);
  const size_t elems = 2 * size_t(c_.num_layers) * kv_layer_elems_;
  kv_ = mem_.alloc<__nv_bfloat16>(elems);
  // Zeros, so padded decode rows (which read block 0) see finite keys.
  CUDA_CHECK(cudaMemsetAsync(kv_, 0, elems * sizeof(__nv_bfloat16), stream_));
  CUDA_CHECK(cudaStreamSynchronize(stream_));
}

// One step at max_num_batched_tokens through a throw-away cache: loads every kernel module and
// plans the GEMMs so their memory is in use before the KV cache is sized.
void CudaBackend::warm_up() {
  const int bs = opts_.block_size;
  std::vector<std::vector<int32_t>> tokens, tables;
  int remaining = opts_.max_num_batched_tokens, next_block = 0;
  while (remaining > 0 && static_cast<int>(tokens.size()) < opts_.max_num_seqs) {
    const int n = std::min(remaining, opts_.max_model_len);
    tokens.emplace_back(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) tokens.back()[size_t(i)] = static_cast<int32_t>((i * 7919) % c_.vocab_size);
    tables.emplace_back();
    for (int b = 0; b < CEIL_DIV(n, bs); ++b) tables.back().push_back(next_block++);
    remaining -= n;
  }
  allocate_kv(next_block);
  Batch batch;
  for (size_t i = 0; i < tokens.size(); ++i) {
    BatchEntry e;
    e.seq_id = static_cast<int64_t>(i);
    e.tokens = tokens[i];
    e.block_table = tables[i];
    e.sample = true;
    e.sampling.temperature = 1.0f;
    e.sampling.top_p = 0.9f;
    batch.entries.push_back(e);
  }
  StepOutput out;
  step(batch, false, &out);
  // A graph captured here would point at the throw-away cache.
  for (auto& [b, g] : graphs_) CUDA_CHECK(cudaGraphExecDestroy(g));
  graphs_.clear();
  mem_.free(kv_);
  kv_ = nullptr;
}

Status CudaBackend::init() {
  CUDA_CHECK(cudaSetDevice(device_));
  cudaDeviceProp prop{};
  CUDA_CHECK(cudaGetDeviceProperties(&prop, device_));
  num_sms_ = prop.multiProcessorCount;
  l2_bytes_ = size_t(std::max(prop.l2CacheSize, 0));
  CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  for (cudaEvent_t& e : done_) CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  CUDA_CHECK(cudaEventCreateWithFlags(&staged_, cudaEventDisableTiming));

  max_blocks_ = CEIL_DIV(opts_.max_model_len, opts_.block_size);
  tokens_per_item_ = attention_tokens_per_item(static_cast<int>(c_.num_heads), static_cast<int>(c_.num_kv_heads));
  for (int b = 1; b <= 256 && b <= opts_.max_num_seqs; b *= 2) buckets_.push_back(b);
  if (buckets_.back() < opts_.max_num_seqs) buckets_.push_back(opts_.max_num_seqs);
  max_tokens_ = std::max(opts_.max_num_batched_tokens, buckets_.back());
  for (int b : buckets_) {
    max_splits_rows_ = std::max(max_splits_rows_, b * splits_for(b, opts_.max_model_len));
    const int parts = CEIL_DIV(max_blocks_ * opts_.block_size, partition_for(b));
    max_splits_rows_ = std::max(max_splits_rows_, b * parts);
  }

  upload_weights();
  const size_t weight_bytes = mem_.allocated_bytes();
  allocate_activations();
  warm_up();

  size_t free_bytes = 0, total_bytes = 0;
  CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  // note: the KV budget counts only this process: fraction * total minus what this backend
  // allocated (weights, activations, workspace) and a reserve for uncounted context memory;
  // other processes' use (MPS neighbours) shows only in cudaMemGetInfo's free bytes, which
  // caps the result again.
  const double own = double(mem_.allocated_bytes()) + double(kUncountedReserveBytes);
  const double budget = opts_.gpu_memory_fraction * double(total_bytes) - own;
  const double free_cap = double(free_bytes) - double(kFreeMarginBytes);
  const double kv_bytes = std::min(budget, free_cap);
  const size_t bytes_per_block = 2 * size_t(c_.num_layers) * size_t(c_.num_kv_heads) * size_t(opts_.block_size) *
                                 size_t(c_.head_dim) * sizeof(__nv_bfloat16);
  int64_t blocks = kv_bytes > 0 ? static_cast<int64_t>(kv_bytes / double(bytes_per_block)) : 0;
  blocks = std::min<int64_t>(blocks, (int64_t{1} << 30) / opts_.block_size);
  if (blocks < max_blocks_) {
    return Status::errorf(
        "cuda backend: room for {} KV blocks, one max_model_len={} sequence needs {} (GPU {} GiB total, {:.2f} GiB "
        "free, fraction {}, weights {:.2f} GiB, activations+workspace {:.2f} GiB)",
        blocks, opts_.max_model_len, max_blocks_, double(total_bytes) / (1 << 30), double(free_bytes) / (1 << 30),
        opts_.gpu_memory_fraction, double(weight_bytes) / (1 << 30),
        double(mem_.allocated_bytes() - weight_bytes) / (1 << 30));
  }
  allocate_kv(blocks);
  log::info("cuda backend: {} ({} SMs), weights {:.2f} GiB, activations+workspace {:.2f} GiB, KV cache {} blocks "
            "({:.2f} GiB), graphs {}",
            prop.name, num_sms_, double(weight_bytes) / (1 << 30),
            double(mem_.allocated_bytes() - weight_bytes - size_t(blocks) * bytes_per_block) / (1 << 30), blocks,
            double(size_t(blocks) * bytes_per_block) / (1 << 30), opts_.cuda_graphs ? "on" : "off");
  return Status::ok();
}

// note: decode steps of at most kGemvMaxRows rows take the fused path: GEMVs that normalise the
// residual in their prologue and add into it in their epilogue (no delta buffer, no separate
// norm or SiLU kernels), and, for models without q/k norm, do bias, RoPE and the KV-cache write
// in the qkv GEMV's epilogue: five launches per layer (six with q/k norm). Decode steps of up to
// kMmaLinearMaxRows rows take the same path on the tensor-core linears (mma_linear.cuh), whose
// norm prologue is a separate rms_norm launch: seven launches per layer. Every other step
// (prefill, larger decode batches) runs cuBLASLt GEMMs, with o and down accumulating into the
// residual themselves (beta = 1), so the norms only normalise.
// note: measured on an H200 against o and down writing an f32 delta that the next norm added
// (docs/results/cuda_backend.md, sixteenth session): decode steps -1.1 to -1.8% (0.5B, 1.5B at 256
// rows), -0.7 to -1.6% (7B at 16-256 rows), 0 to -0.5% (3B at 256 rows); prefill +1 to +2.7%.
void CudaBackend::forward(const StepShape& s) {
  const int h = static_cast<int>(c_.hidden_size), q = static_cast<int>(c_.q_dim()), k = static_cast<int>(c_.kv_dim());
  const int in = static_cast<int>(c_.intermediate_size), v = static_cast<int>(c_.vocab_size);
  const float eps = static_cast<float>(c_.rms_norm_eps);
  const StagingLayout& L = *layout_;
  // Fused decode path: the GEMV kernel up to gemv_max_rows_, the tensor-core linears above.
  const bool use_mma = s.decode && s.tokens > gemv_max_rows_ && s.tokens <= mma_max_rows_;
  const bool fused = (s.decode && s.tokens <= gemv_max_rows_) || use_mma;
  auto mark = [&](const char* name) {
    if (profiling_) profiler_.mark(stream_, name);
  };
  // mma_small: this linear takes the tensor-core kernel at GEMV row counts too (mma_small_ below).
  auto gemv_call = [&](const void* x, const __nv_bfloat16* norm_w, const __nv_bfloat16* w, void* y, int n_in,
                       int n_out, GemvIn im, GemvOut om, const QkvRopeArgs* rope = nullptr, bool mma_small = false) {
    GemvArgs g;
    if (rope) g.rope = *rope;
    g.x = x;
    g.norm_w = norm_w;
    g.eps = eps;
    g.w = w;
    g.y = y;
    g.rows = s.tokens;
    g.in = n_in;
    g.out = n_out;
    if (use_mma || mma_small) {
      g.x_norm = hnorm_;  // the normalized x (rows, n_in); n_in is the hidden size for every kRmsNorm call
      mma_linear(g, im, om, stream_);
    } else {
      gemv(g, im, om, stream_);
    }
  };
  embed_lookup(embed_, dev<int32_t>(L.tokens), residual_, s.tokens, h, v, stream_);
  mark("embed");
  for (size_t l = 0; l < layers_.size(); ++l) {
    const LayerDev& d = layers_[l];
    if (opts_.ablation != Ablation::kNoAttention) {
      __nv_bfloat16* kc = kv_ + (2 * l) * kv_layer_elems_;
      __nv_bfloat16* vc = kv_ + (2 * l + 1) * kv_layer_elems_;
      QkvRopeArgs r;
      r.qkv = qkv_;
      r.bias = d.qkv_bias;
      r.q_norm = d.q_norm;
      r.k_norm = d.k_norm;
      r.inv_freq = inv_freq_;
      r.positions = dev<int32_t>(L.positions);
      r.slot_mapping = dev<int32_t>(L.slots);
      r.q_out = q_;
      r.k_cache = kc;
      r.v_cache = vc;
      r.num_tokens = s.tokens;
      r.n_heads = static_cast<int>(c_.num_heads);
      r.n_kv_heads = static_cast<int>(c_.num_kv_heads);
      r.head_dim = static_cast<int>(c_.head_dim);
      r.block_size = opts_.block_size;
      r.eps = eps;
      // note: per-head q/k norm needs a whole head's sum of squares, and a head's columns span
      // several blocks of the GEMV: those models keep the separate qkv_rope kernel.
      if (fused && !d.q_norm && !d.k_norm) {
        gemv_call(residual_, d.input_norm, d.qkv, nullptr, h, q + 2 * k, GemvIn::kRmsNorm, GemvOut::kQkvRope, &r);
        mark("norm_qkv_rope_gemv");
      } else {
        if (fused) {
          gemv_call(residual_, d.input_norm, d.qkv, qkv_, h, q + 2 * k, GemvIn::kRmsNorm, GemvOut::kF32);
          mark("norm_qkv_gemv");
        } else {
          rms_norm(residual_, d.input_norm, hnorm_, nullptr, s.tokens, h, eps, stream_);
          mark("rms_norm");
          gemm_->linear(hnorm_, d.qkv, qkv_, true, s.tokens, h, q + 2 * k, stream_, s.decode);
          mark("qkv_gemm");
        }
        qkv_rope_cache_write(r, stream_);
        mark("qkv_rope");
      }
      const float scale = 1.0f / std::sqrt(static_cast<float>(c_.head_dim));
      if (s.partition > 0) {
        DecodeAttentionArgs a;
        a.q = q_;
        a.k_cache = kc;
        a.v_cache = vc;
        a.out = attn_;
        a.positions = dev<int32_t>(L.positions);
        a.block_tables = dev<int32_t>(L.block_tables);
        a.max_blocks_per_seq = max_blocks_;
        a.num_tokens = s.tokens;
        a.n_heads = r.n_heads;
        a.n_kv_heads = r.n_kv_heads;
        a.head_dim = r.head_dim;
        a.block_size = opts_.block_size;
        a.scale = scale;
        a.partition_size = s.partition;
        a.max_partitions = s.max_partitions;
        a.partial_o = partial_o_;
        a.partial_ml = partial_ml_;
        a.counters = decode_counters_;
        a.cluster = s.cluster;
        a.warps = s.one_block_warps;
        a.max_kv_len = s.max_kv_len;
        a.max_shared = !fused || use_mma;  // GEMV neighbours want L1; the others most shared memory
        decode_attention(a, stream_);
      } else {
        AttentionArgs a;
        a.q = q_;
        a.k_cache = kc;
        a.v_cache = vc;
        a.out = attn_;
        a.positions = dev<int32_t>(L.positions);
        a.block_tables = dev<int32_t>(L.block_tables);
        a.items = dev<int32_t>(L.items);
        a.max_blocks_per_seq = max_blocks_;
        a.num_items = s.items;
        a.num_tokens = s.tokens;
        a.n_heads = r.n_heads;
        a.n_kv_heads = r.n_kv_heads;
        a.head_dim = r.head_dim;
        a.block_size = opts_.block_size;
        a.scale = scale;
        a.num_splits = s.splits;
        a.partial_o = partial_o_;
        a.partial_ml = partial_ml_;
        paged_attention(a, stream_);
      }
      mark("attention");
      if (fused) {
        gemv_call(attn_, nullptr, d.o, residual_, q, h, GemvIn::kBf16, GemvOut::kAddF32);
        mark("o_gemv_add");
      } else {
        gemm_->linear(attn_, d.o, residual_, true, s.tokens, q, h, stream_, s.decode, /*accumulate=*/true);
        mark("o_gemm_add");
      }
    }
    if (opts_.ablation != Ablation::kNoMlp) {
      if (fused) {
        gemv_call(residual_, d.post_norm, d.gate_up, act_, h, in, GemvIn::kRmsNorm, GemvOut::kSwiGlu, nullptr,
                  mma_small_gate_up_);
        mark("norm_gate_up_swiglu_gemv");
        gemv_call(act_, nullptr, d.down, residual_, in, h, GemvIn::kBf16, GemvOut::kAddF32);
        mark("down_gemv_add");
      } else {
        rms_norm(residual_, d.post_norm, hnorm_, nullptr, s.tokens, h, eps, stream_);
        mark("rms_norm");
        gemm_->linear(hnorm_, d.gate_up, gate_up_, false, s.tokens, h, 2 * in, stream_, s.decode);
        mark("gate_up_gemm");
        silu_mul(gate_up_, act_, s.tokens, in, stream_);
        mark("silu_mul");
        gemm_->linear(act_, d.down, residual_, true, s.tokens, in, h, stream_, s.decode, /*accumulate=*/true);
        mark("down_gemm_add");
      }
    }
  }
  if (s.sampled == 0) return;
  if (fused) {  // decode: sampled row i is token i
    gemv_call(residual_, final_norm_, lm_head_, logits_, h, v, GemvIn::kRmsNorm, GemvOut::kF32, nullptr,
              mma_small_lm_head_);
    mark("final_norm_lm_head_gemv");
  } else {
    rms_norm(residual_, final_norm_, final_h_, dev<int32_t>(L.sample_rows), s.sampled, h, eps, stream_);
    mark("rms_norm");
    gemm_->linear(final_h_, lm_head_, logits_, true, s.sampled, h, v, stream_, s.decode);
    mark("lm_head_gemm");
  }
  if (s.greedy) {
    argmax_rows(logits_, argmax_val_, argmax_idx_, out_tokens_, s.sampled, v, stream_);
    mark("argmax");
  } else {
    sample_tokens(logits_, dev<SampleParamsDev>(L.params), out_tokens_, s.sampled, v, stream_);
    mark("sampler");
  }
}

void CudaBackend::step(const Batch& batch, bool want_logits, StepOutput* out) {
  MPS_CHECK_MSG(in_flight_.empty(), "cuda backend: step() while launched steps are still to be collected");
  launch(batch, want_logits);
  collect(out);
}

// note: the host time of a step is split across launch() (packing, copies, kernel or graph
// launches) and the end of collect() (reading the tokens back); wait_us is only the time
// collect() blocked on the device, so with async scheduling it shrinks by whatever host work
// the engine overlapped with the step.
void CudaBackend::launch(const Batch& batch, bool want_logits) {
  using Clock = std::chrono::steady_clock;
  const auto t_begin = Clock::now();
  MPS_CHECK_MSG(in_flight_.size() < 2, "cuda backend: launch() with two steps still to be collected");
  // note: logits_ holds one step's logits until its collect() copies them out.
  MPS_CHECK_MSG(in_flight_.empty() || (!in_flight_.back().want_logits && !want_logits),
                "cuda backend: a step that wants logits cannot be in flight beside another");
  CUDA_CHECK(cudaSetDevice(device_));
  last_timings_ = StepTimings{.wait_us = last_timings_.wait_us};  // the wait stays the last collect()'s
  InFlight f;
  f.want_logits = want_logits;
  f.slot = in_flight_.empty() ? 0 : 1 - in_flight_.back().slot;  // the half the step in flight does not use
  // The sampled rows of the step before, if it is still in flight (BatchEntry::prev_sample_row).
  const int prev_sampled = in_flight_.empty() ? -1 : in_flight_.back().sampled;
  const int64_t num_tokens = batch.num_tokens();
  const int num_seqs = static_cast<int>(batch.entries.size());
  MPS_CHECK_MSG(num_tokens <= opts_.max_num_batched_tokens, "batch of {} tokens exceeds max_num_batched_tokens {}",
                num_tokens, opts_.max_num_batched_tokens);
  MPS_CHECK_MSG(num_seqs <= opts_.max_num_seqs, "batch of {} sequences exceeds max_num_seqs {}", num_seqs,
                opts_.max_num_seqs);
  if (num_tokens == 0) {  // nothing to run; collect() returns no tokens
    in_flight_.push_back(f);
    return;
  }
  // The stream must have read the last launch's staging before it is packed again (it has,
  // unless that launch is still queued behind the step before it).
  if (!in_flight_.empty()) CUDA_CHECK(cudaEventSynchronize(staged_));
  bool decode_only = true;
  for (const BatchEntry& e : batch.entries) decode_only = decode_only && e.tokens.size() == 1 && e.sample;
  // note: decode-only steps are padded to their bucket in eager mode too, so graphs on and off
  // run the same kernels on the same shapes (bit-identical results).
  const int padded = decode_only ? bucket_for(num_seqs) : num_seqs;

  const StagingLayout& L = *layout_;
  int32_t* tok = host<int32_t>(L.tokens);
  int32_t* pos = host<int32_t>(L.positions);
  int32_t* slot = host<int32_t>(L.slots);
  int32_t* rows = host<int32_t>(L.sample_rows);
  int32_t* items = host<int32_t>(L.items);
  SampleParamsDev* params = host<SampleParamsDev>(L.params);
  int32_t* tables = host<int32_t>(L.block_tables);
  int32_t* gather = host<int32_t>(L.gather);
  const int bs = opts_.block_size;
  int t = 0, n_items = 0, n_sampled = 0, max_kv_len = 0, n_gather = 0;
  bool all_greedy = true;
  bool tables_changed = false;  // some staging row of the block tables was written this step
  for (int i = 0; i < num_seqs; ++i) {
    const BatchEntry& e = batch.entries[size_t(i)];
    const int n = static_cast<int>(e.tokens.size());
    MPS_CHECK_MSG(n > 0 || !e.sample, "sequence {} samples without new tokens", e.seq_id);
    MPS_CHECK_MSG(e.context_len + n <= static_cast<int64_t>(e.block_table.size()) * bs,
                  "sequence {}: {} tokens do not fit its {} blocks", e.seq_id, e.context_len + n,
                  e.block_table.size());
    MPS_CHECK_MSG(static_cast<int>(e.block_table.size()) <= max_blocks_, "sequence {}: {} blocks exceed max_model_len",
                  e.seq_id, e.block_table.size());
    // note: the staging row keeps what was packed into it last time: for the same sequence and
    // table epoch only the ids appended since are checked and copied (one branch-free min/max
    // pass and a memcpy). At batch 256 and context 2048 the tables hold ~37k ids; packing them
    // all cost 50-110 us of host time per step, in the device's idle gap between steps.
    const int32_t* bt = e.block_table.data();
    const size_t nb = e.block_table.size();
    TableRow& row = table_rows_[size_t(i)];
    int32_t* dst = tables + size_t(i) * size_t(max_blocks_);
    // The same sequence, epoch and a table that only grew (the ends of the packed part are
    // spot-checked, against a caller that reuses ids): keep the packed part.
    const size_t kept = size_t(row.n);
    const bool grew = row.seq_id == e.seq_id && row.epoch == e.table_epoch && kept > 0 && kept <= nb &&
                      dst[0] == bt[0] && dst[kept - 1] == bt[kept - 1];
    const size_t from = grew ? kept : 0;
    if (from < nb) {
      int32_t lo = bt[from], hi = bt[from];
      for (size_t j = from + 1; j < nb; ++j) lo = std::min(lo, bt[j]), hi = std::max(hi, bt[j]);
      MPS_CHECK_MSG(lo >= 0 && hi < num_blocks_, "KV block id {} out of range", lo < 0 ? lo : hi);
      std::memcpy(dst + from, bt + from, (nb - from) * sizeof(int32_t));
      tables_changed = true;
    }
    row = TableRow{e.seq_id, e.table_epoch, static_cast<int32_t>(nb)};
    for (int j = 0; j < n; ++j) {
      const int32_t p = e.context_len + j;
      tok[t + j] = e.tokens[size_t(j)];
      pos[t + j] = p;
      slot[t + j] = e.block_table[size_t(p / bs)] * bs + p % bs;
    }
    if (e.prev_sample_row >= 0) {  // the token comes from the step in flight, on the device
      MPS_CHECK_MSG(n == 1 && e.prev_sample_row < prev_sampled,
                    "sequence {}: input from row {} of a step in flight that sampled {}", e.seq_id,
                    e.prev_sample_row, prev_sampled);
      tok[t] = 0;
      gather[2 * n_gather] = t, gather[2 * n_gather + 1] = e.prev_sample_row;
      ++n_gather;
    }
    for (int j0 = 0; j0 < n; j0 += tokens_per_item_) {
      int32_t* it = items + 4 * n_items++;
      it[0] = i, it[1] = t + j0, it[2] = std::min(tokens_per_item_, n - j0), it[3] = 0;
    }
    if (e.sample) {
      rows[n_sampled] = t + n - 1;
      SampleParamsDev& sp = params[n_sampled++];
      sp.temperature = e.sampling.temperature;
      sp.top_p = e.sampling.top_p;
      sp.top_k = e.sampling.top_k;
      sp.u = e.sampling.greedy() ? 0.f : sampling_uniform(e.sampling.seed, static_cast<uint64_t>(e.num_generated));
      all_greedy = all_greedy && e.sampling.greedy();
    }
    max_kv_len = std::max(max_kv_len, e.context_len + n);
    t += n;
  }
  const int real_sampled = n_sampled;
  for (int i = num_seqs; i < padded; ++i, ++t) {  // decode padding: reads block 0, writes nothing
    tok[t] = 0, pos[t] = 0, slot[t] = -1;
    int32_t* it = items + 4 * n_items++;
    it[0] = i, it[1] = t, it[2] = 1, it[3] = 0;
    TableRow& row = table_rows_[size_t(i)];
    if (row.seq_id != kPaddingRow) {
      tables[size_t(i) * size_t(max_blocks_)] = 0;
      row = TableRow{kPaddingRow, 0, 1};
      tables_changed = true;
    }
    rows[n_sampled] = t;
    params[n_sampled++] = SampleParamsDev{};
  }
  const auto t_packed = Clock::now();
  // The device's copy of the tables persists between steps: it needs the upload only when a row
  // changed (every 16 decode steps for a batch that crosses block boundaries together).
  const size_t bytes =
      L.block_tables + (tables_changed ? size_t(padded) * size_t(max_blocks_) * sizeof(int32_t) : size_t{0});
  CUDA_CHECK(cudaMemcpyAsync(staging_dev_, staging_host_, bytes, cudaMemcpyHostToDevice, stream_));
  CUDA_CHECK(cudaEventRecord(staged_, stream_));
  // out_tokens_ still holds the sampled tokens of the step before (this step's sampler runs later).
  gather_prev_tokens(dev<int32_t>(L.tokens), dev<int32_t>(L.gather), out_tokens_, n_gather, stream_);

  StepShape shape;
  shape.tokens = t;
  shape.items = n_items;
  shape.sampled = n_sampled;
  shape.splits = decode_only ? splits_for(padded, opts_.max_model_len) : 1;
  shape.decode = decode_only;
  shape.greedy = all_greedy;
  if (decode_only && decode_kernel_ok()) {
    shape.one_block_warps =
        one_block_attention_ ? decode_one_block_warps(padded, static_cast<int>(c_.num_kv_heads), max_kv_len) : 0;
    if (shape.one_block_warps > 0) {
      shape.partition = shape.one_block_warps * kDecodeKeysPerWarp;
      shape.max_partitions = 1;
      shape.max_kv_len = max_kv_len;
    } else {
      shape.partition = partition_for(padded);
      shape.max_partitions = CEIL_DIV(max_blocks_ * bs, shape.partition);
      if (cluster_attention_)
        shape.cluster = decode_cluster(padded, static_cast<int>(c_.num_kv_heads), max_blocks_ * bs);
    }
  }
  last_timings_.valid = true;
  last_timings_.decode_only = decode_only;
  last_timings_.num_tokens = static_cast<int32_t>(num_tokens);
  last_timings_.num_seqs = num_seqs;
  if (profiling_) {
    profiler_.begin(stream_, decode_only ? "decode" : "prefill");
    forward(shape);
  } else if (decode_only && opts_.cuda_graphs) {
    last_timings_.graph = true;
    const auto key = std::make_tuple(padded, shape.one_block_warps, all_greedy);
    auto it = graphs_.find(key);
    if (it != graphs_.end()) {
      CUDA_CHECK(cudaGraphLaunch(it->second, stream_));
    } else {
      forward(shape);  // first use: eager (loads modules, plans GEMMs), then capture for next time
      cudaGraph_t graph = nullptr;
      CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
      forward(shape);
      CUDA_CHECK(cudaStreamEndCapture(stream_, &graph));
      cudaGraphExec_t exec = nullptr;
      CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
      CUDA_CHECK(cudaGraphDestroy(graph));
      graphs_.emplace(key, exec);
    }
  } else {
    forward(shape);
  }
  if (real_sampled > 0) {
    CUDA_CHECK(cudaMemcpyAsync(out_tokens_host_ + size_t(f.slot) * size_t(opts_.max_num_seqs), out_tokens_,
                               size_t(real_sampled) * sizeof(int32_t), cudaMemcpyDeviceToHost, stream_));
  }
  CUDA_CHECK(cudaEventRecord(done_[f.slot], stream_));
  f.sampled = real_sampled;
  f.launched = true;
  in_flight_.push_back(f);
  const auto t_end = Clock::now();
  last_timings_.host_us = std::chrono::duration<double, std::micro>(t_end - t_begin).count();
  last_timings_.enqueue_us = std::chrono::duration<double, std::micro>(t_end - t_packed).count();
}

void CudaBackend::collect(StepOutput* out) {
  using Clock = std::chrono::steady_clock;
  const auto t_begin = Clock::now();
  MPS_CHECK(out != nullptr);
  MPS_CHECK_MSG(!in_flight_.empty(), "cuda backend: collect() without a launched step");
  CUDA_CHECK(cudaSetDevice(device_));
  const InFlight f = in_flight_.front();
  in_flight_.erase(in_flight_.begin());
  out->tokens.clear();
  out->logits.clear();
  if (!f.launched) return;  // an empty batch launched nothing
  CUDA_CHECK(cudaEventSynchronize(done_[f.slot]));
  // note: logits are for tests and golden checks only; a blocking copy after the step keeps a
  // [max_num_seqs, vocab] f32 pinned buffer out of the serving path. logits_ is not written
  // again before the next launch().
  if (f.want_logits && f.sampled > 0) {
    out->logits.resize(size_t(f.sampled) * size_t(c_.vocab_size));
    CUDA_CHECK(cudaMemcpy(out->logits.data(), logits_, out->logits.size() * sizeof(float), cudaMemcpyDeviceToHost));
  }
  const auto t_synced = Clock::now();
  if (profiling_) profiler_.end();
  const int32_t* host_tokens = out_tokens_host_ + size_t(f.slot) * size_t(opts_.max_num_seqs);
  out->tokens.assign(host_tokens, host_tokens + f.sampled);
  auto us = [](auto d) { return std::chrono::duration<double, std::micro>(d).count(); };
  last_timings_.host_us += us(Clock::now() - t_synced);
  last_timings_.wait_us = us(t_synced - t_begin);
}

Result<DeviceCeilings> CudaBackend::measure_ceilings() const {
  CUDA_CHECK(cudaSetDevice(device_));
  DeviceCeilings c;
  cudaDeviceProp prop{};
  CUDA_CHECK(cudaGetDeviceProperties(&prop, device_));
  c.device_name = prop.name;
  int drv = 0, rt = 0;
  CUDA_CHECK(cudaDriverGetVersion(&drv));
  CUDA_CHECK(cudaRuntimeGetVersion(&rt));
  c.driver = fmt::format("{}.{}", drv / 1000, (drv % 1000) / 10);
  c.runtime = fmt::format("{}.{}", rt / 1000, (rt % 1000) / 10);
  c.copy_gb_s = measure_copy_gb_s(stream_);
  c.bf16_tflops = measure_gemm_tflops(*gemm_, stream_);
  if (c.copy_gb_s <= 0 || c.bf16_tflops <= 0) {
    return Status::errorf("cuda backend: no room for the ceiling buffers (~2.4 GiB free needed; lower "
                          "--gpu-memory-fraction)");
  }
  return c;
}

Status validate(const model::ModelWeights& w, const BackendOptions& opts) {
  const model::ModelConfig& c = w.config;
  if (c.hidden_size <= 0 || c.num_layers <= 0 || c.num_heads <= 0 || c.num_kv_heads <= 0 || c.vocab_size <= 0 ||
      c.intermediate_size <= 0 || static_cast<int64_t>(w.layers.size()) != c.num_layers) {
    return Status::error("cuda backend: model config has a non-positive dimension or missing layers");
  }
  if (c.head_dim != 64 && c.head_dim != 128) {
    return Status::errorf("cuda backend: head_dim {} unsupported (64 or 128)", c.head_dim);
  }
  if (c.num_heads % c.num_kv_heads != 0 || c.num_heads / c.num_kv_heads > 64) {
    return Status::errorf("cuda backend: {} heads over {} kv heads unsupported", c.num_heads, c.num_kv_heads);
  }
  if (c.hidden_size % 8 != 0 || c.intermediate_size % 8 != 0 || c.vocab_size % 8 != 0) {
    return Status::errorf("cuda backend: hidden {}, intermediate {} and vocab {} must be multiples of 8", c.hidden_size,
                          c.intermediate_size, c.vocab_size);
  }
  auto has = [](const model::TensorView& t, int64_t n) { return !t.empty() && t.numel() == n; };
  const int64_t h = c.hidden_size, q = c.q_dim(), k = c.kv_dim(), in = c.intermediate_size;
  if (!has(w.embed_tokens, c.vocab_size * h) || !has(w.final_norm, h) || !has(w.lm_head, c.vocab_size * h)) {
    return Status::error("cuda backend: embed_tokens, final_norm or lm_head missing or mis-shaped");
  }
  for (const model::LayerWeights& l : w.layers) {
    const bool ok = has(l.input_norm, h) && has(l.q_proj, q * h) && has(l.k_proj, k * h) && has(l.v_proj, k * h) &&
                    has(l.o_proj, h * q) && has(l.post_attn_norm, h) && has(l.gate_proj, in * h) &&
                    has(l.up_proj, in * h) && has(l.down_proj, h * in) && (l.q_bias.empty() || has(l.q_bias, q)) &&
                    (l.k_bias.empty() || has(l.k_bias, k)) && (l.v_bias.empty() || has(l.v_bias, k)) &&
                    (l.q_norm.empty() || has(l.q_norm, c.head_dim)) && (l.k_norm.empty() || has(l.k_norm, c.head_dim));
    if (!ok) return Status::errorf("cuda backend: a weight of layer {} is missing or mis-shaped", &l - w.layers.data());
  }
  if (opts.block_size <= 0 || opts.max_num_batched_tokens <= 0 || opts.max_model_len <= 0 || opts.max_num_seqs <= 0) {
    return Status::error("cuda backend: block_size, max_num_seqs, max_num_batched_tokens and max_model_len must be > 0");
  }
  if (!(opts.gpu_memory_fraction > 0.0 && opts.gpu_memory_fraction <= 1.0)) {
    return Status::errorf("cuda backend: gpu_memory_fraction {} outside (0, 1]", opts.gpu_memory_fraction);
  }
  return Status::ok();
}

}  // namespace

Result<std::unique_ptr<Backend>> make_cuda_backend(const model::ModelWeights& weights, const BackendOptions& opts) {
  MPS_RETURN_IF_ERROR(validate(weights, opts));
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    return Status::errorf("cuda backend: no usable GPU ({})", err != cudaSuccess ? cudaGetErrorString(err) : "none found");
  }
  if (opts.gpu_index < 0 || opts.gpu_index >= count) {
    return Status::errorf("cuda backend: gpu_index {} out of range ({} GPUs)", opts.gpu_index, count);
  }
  auto b = std::make_unique<CudaBackend>(weights, opts, opts.gpu_index);
  MPS_RETURN_IF_ERROR(b->init());
  return std::unique_ptr<Backend>(std::move(b));
}

}  // namespace mpserve::backend::cuda
