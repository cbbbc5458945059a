// Host entry points to single CUDA kernels for tests/cuda (compiled by the host compiler): host
// vectors in, host vectors out. Inputs go up as the kernels take them (bf16 where the kernel
// reads bf16, so pass values already rounded to bf16 to compare exactly); every output buffer is
// poisoned with NaN before the launch, so an element the kernel does not write fails the check.
#pragma once

#include <cstdint>
#include <vector>

namespace mpserve::backend::cuda::test_api {

// True when a CUDA device is usable.
bool gpu_available();

// Returns out (rows, hidden) as f32 of its bf16. row_index non-empty: gathered form, out has
// row_index.size() rows. *x_unchanged (when given): x read back from the device after the
// kernel equals x.
std::vector<float> rms_norm(const std::vector<float>& x, const std::vector<float>& weight,
                            const std::vector<int32_t>& row_index, int rows, int hidden, float eps,
                            bool* x_unchanged = nullptr);

std::vector<float> silu_mul(const std::vector<float>& gate_up, int rows, int inter);

std::vector<float> embed(const std::vector<float>& table, const std::vector<int32_t>& ids, int vocab, int hidden);

// y (rows, out) = x . w^T via cuBLASLt; f32 output. tune: the Gemm times its candidates first
// (gemm.h); *candidates (when given) is how many it timed, 0 when it did not tune. y0 (when
// given, (rows, out)): y starts as y0 and the GEMM accumulates into it (Gemm::linear's
// `accumulate`), the tuner included.
std::vector<float> linear(const std::vector<float>& x, const std::vector<float>& w, int rows, int in, int out,
                          bool tune = false, int* candidates = nullptr, const std::vector<float>* y0 = nullptr);

struct QkvRopeOut {
  std::vector<float> q;        // (T, Q)
  std::vector<float> k_cache;  // (num_blocks, n_kv_heads, block_size, D)
  std::vector<float> v_cache;
};
// qkv (T, Q + 2K) and bias in natural order; the call puts q and k in the RoPE pair layout the
// kernel reads (qkv_rope.cuh).
QkvRopeOut qkv_rope(const std::vector<float>& qkv, const std::vector<float>& bias, const std::vector<float>& q_norm,
                    const std::vector<float>& k_norm, const std::vector<float>& inv_freq,
                    const std::vector<int32_t>& positions, const std::vector<int32_t>& slots, int num_blocks,
                    int n_heads, int n_kv_heads, int head_dim, int block_size, float eps);

// Caches in the CUDA layout (num_blocks, n_kv_heads, block_size, D). items: 4 ints each.
std::vector<float> attention(const std::vector<float>& q, const std::vector<float>& k_cache,
                             const std::vector<float>& v_cache, const std::vector<int32_t>& positions,
                             const std::vector<int32_t>& block_tables, int max_blocks_per_seq,
                             const std::vector<int32_t>& items, int n_heads, int n_kv_heads, int head_dim,
                             int block_size, int num_splits);
int attention_tokens_per_item(int n_heads, int n_kv_heads);

// Decode attention: token i is sequence i's one query (block_tables has one row per token).
std::vector<float> decode_attention(const std::vector<float>& q, const std::vector<float>& k_cache,
                                    const std::vector<float>& v_cache, const std::vector<int32_t>& positions,
                                    const std::vector<int32_t>& block_tables, int max_blocks_per_seq, int n_heads,
                                    int n_kv_heads, int head_dim, int block_size, int partition_size);

// ---- Small-batch GEMV (gemv.cu): the kernel, its plan, benchmarks ----

// The fused small-batch GEMV (gemv.cuh). x: bf16 values (rows, in) for kBf16 input, f32 residual
// (rows, in) for kRmsNorm; y_init: the f32 residual (rows, out) for the kAddF32 epilogue, else
// ignored. Returns y as f32 (rows, out). n_tiles / warps / grid > 0 force the launch's plan (so a
// test reaches every tile height and blocks that loop over several tiles).
// mma: the tensor-core decode linear (mma_linear.cuh, rows 1..64) instead of the GEMV; bn / split
// > 0 force its plan (n_tiles / warps / grid are then unused).
enum class GemvMode { kNormF32, kNormSwiGlu, kAddF32, kF32 };
std::vector<float> gemv(GemvMode mode, const std::vector<float>& x, const std::vector<float>& norm_w,
                        const std::vector<float>& w, const std::vector<float>& y_init, int rows, int in, int out,
                        float eps, int n_tiles = 0, int warps = 0, int grid = 0, bool mma = false, int bn = 0,
                        int split = 0);

// The RMSNorm + qkv GEMV, then bias, RoPE and the paged-cache write: fused, one launch with the
// kQkvRope epilogue; else the GEMV's f32 store and qkv_rope_cache_write (the path of models with
// q/k norm). residual (rows, in) f32, norm_w (in); w (Q + 2K, in) and bias (Q + 2K, or empty) in
// natural order (the call puts q and k in the RoPE pair layout, as the uploader does); positions
// and slots (rows). q (rows, Q) and both caches (num_blocks, n_kv_heads, block_size, D) are
// poisoned first. n_tiles / warps / grid > 0 force the GEMV's plan; mma, bn, split as in gemv().
QkvRopeOut gemv_qkv_rope(bool fused, const std::vector<float>& residual, const std::vector<float>& norm_w,
                         const std::vector<float>& w, const std::vector<float>& bias,
                         const std::vector<float>& inv_freq, const std::vector<int32_t>& positions,
                         const std::vector<int32_t>& slots, int num_blocks, int in, int n_heads, int n_kv_heads,
                         int head_dim, int block_size, float eps, int n_tiles = 0, int warps = 0, int grid = 0,
                         bool mma = false, int bn = 0, int split = 0);

// PDL ordering through the residual: `steps` times residual += x . w_o^T (kBf16 -> kAddF32), then
// y = rmsnorm(residual) . w_q^T (kRmsNorm -> kF32), back to back on one stream (each launch
// reads what the one before wrote, or writes what it read). residual: (rows, h) in, updated;
// returns y (rows, out) of the last step.
// mma: both linears on the tensor-core decode linear (rows up to 64).
std::vector<float> gemv_chain(const std::vector<float>& x, const std::vector<float>& w_o, std::vector<float>& residual,
                              const std::vector<float>& norm_w, const std::vector<float>& w_q, int rows, int q, int h,
                              int out, int steps, float eps, bool mma = false);

struct GemvBench {
  double us_median = 0, us_min = 0, us_max = 0;  // per launch (per layer for layer_chain_bench)
  double weight_bytes = 0;                        // weight bytes one launch (layer) reads
  int n_tiles = 0, warps = 0, grid = 0;           // the GEMV's plan (0 for cuBLASLt)
  int bn = 0, split = 0;                          // the tensor-core linear's plan (mma)
  int copies = 0;                                 // weight copies the launches rotate through
  int launches = 0;                               // launches per graph replay
};

// One decode linear at `rows`: the fused GEMV with `mode`'s prologue/epilogue (plan forced where
// n_tiles / warps > 0), or, with cublas, the cuBLASLt linear on the same matrix (bf16 x; f32 y, or
// bf16 y of 2*out rows for kNormSwiGlu) without the norm / SiLU / add kernels the GEMV fuses.
// A CUDA graph of launches rotating over weight copies (>= 256 MiB in all: no copy stays in L2),
// replayed `repeats` times after a warm-up; median, min and max of the time per launch.
// grid > 0 forces the number of blocks. mma: the tensor-core decode linear instead (bn / split
// > 0 force its plan; kRmsNorm modes include its rms_norm launch).
GemvBench gemv_bench(GemvMode mode, bool cublas, int rows, int in, int out, int repeats, int n_tiles = 0,
                     int warps = 0, int grid = 0, bool mma = false, int bn = 0, int split = 0);

// `layers` decoder layers without attention, captured in one CUDA graph, each with its own
// weights: fused (RMSNorm+qkv GEMV, o GEMV+add, RMSNorm+gate_up+SwiGLU GEMV, down GEMV+add: 4
// launches) or cuBLASLt (rms_norm, qkv, o + residual, rms_norm, gate_up, silu_mul, down + residual: 7 launches).
// Median (min, max) time per layer over `repeats` replays. mma (with fused): the four linears on
// the tensor-core decode linears (mma_linear.cuh; 6 launches with the two norms).
GemvBench layer_chain_bench(bool fused, int rows, int hidden, int q_dim, int kv_dim, int inter, int layers,
                            int repeats, bool mma = false);

// Whether launches use programmatic dependent launch (MPSERVE_CUDA_PDL, read once per process).
bool pdl_enabled();

// ---- end of the GEMV block ----

std::vector<int32_t> argmax(const std::vector<float>& logits, int rows, int vocab);

struct SampleRow {
  float temperature;
  float top_p;
  int32_t top_k;
  float u;
};
std::vector<int32_t> sample(const std::vector<float>& logits, const std::vector<SampleRow>& rows, int vocab);

// ---- Decode attention (decode_attention.cu) ----

// Launches decode attention once per entry of positions_per_launch (each T long) on the same
// device buffers (q, caches, tables, out, partials, merge counters, zeroed once), out and partials
// poisoned before each launch; returns each launch's out (T, n_heads * head_dim). warps: 4 or 8 per
// block, 0 = the launcher's choice (decode_warps). cluster: 1 = the partition path (partials in
// global memory, merged by the last block); 2/4/8 = cluster mode (DecodeAttentionArgs::cluster).
std::vector<std::vector<float>> decode_attention_launches(const std::vector<float>& q,
                                                          const std::vector<float>& k_cache,
                                                          const std::vector<float>& v_cache,
                                                          const std::vector<std::vector<int32_t>>& positions_per_launch,
                                                          const std::vector<int32_t>& block_tables,
                                                          int max_blocks_per_seq, int n_heads, int n_kv_heads,
                                                          int head_dim, int block_size, int partition_size,
                                                          int warps = 0, int cluster = 1);

// The backend's choice of one block per (sequence, kv head) (attention.cuh): warps per block, or 0.
int decode_one_block_warps(int num_tokens, int n_kv_heads, int max_kv_len);

struct DecodeAttentionBench {
  double us_median = 0, us_min = 0, us_max = 0;  // per launch
  double kv_bytes = 0;                           // K + V bytes one launch reads
  int partition_size = 0;                        // decode_partition_size() on this device
  int max_partitions = 0;
  int warps = 0;                                 // per block (decode_warps() unless forced)
  int cluster = 0;                               // cluster mode's size, 1 = the partition path
  int kv_copies = 0;                             // cache copies the launches rotate through
};
// Times decode attention over `batch` sequences of `ctx` keys (random bf16 q and KV, cache blocks
// randomly permuted, block size 16), grid and partition sized for max_kv_len as the backend
// does. A CUDA graph of 20 launches, each on another copy of the caches where 4 GiB holds 20, is
// replayed after an L2-evicting memset; the result is the median (and range) over `repeats`
// replays of the time per launch, after 3 warm-up replays.
// partition 0: the backend's policy (decode_partition_size, sequence_partition); else exactly that
// many keys per block at every context.
// warps 0: the backend's policy (decode_warps); else 4 or 8 per block.
// cluster 0: the backend's policy (decode_cluster); 1: the partition path; 2/4/8: cluster mode
// (partition > 0 then caps each cluster block's keys: ceil(ctx / partition) blocks in use).
DecodeAttentionBench decode_attention_bench(int n_heads, int n_kv_heads, int head_dim, int batch, int ctx,
                                            int max_kv_len, int repeats, uint32_t seed, int partition = 0,
                                            int warps = 0, int cluster = 0, int cluster_min_tiles = 0);

}  // namespace mpserve::backend::cuda::test_api
