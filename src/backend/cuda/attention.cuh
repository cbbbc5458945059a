// Paged causal GQA attention for prefill (variable length, chunked: earlier keys come from the
// cache) and decode (split-K along the sequence, then a reduce).
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace mpserve::backend::cuda {

// A work item is a run of consecutive query tokens of one sequence: int32 x4
// {seq index, first token (flat index into q/positions), number of tokens, unused}.
// An item holds at most attention_tokens_per_item() tokens (its tokens times the GQA group size
// fill one block's query rows).
struct AttentionArgs {
  const __nv_bfloat16* q = nullptr;        // (T, n_heads*D)
  const __nv_bfloat16* k_cache = nullptr;  // this layer, (num_blocks, n_kv_heads, block_size, D)
  const __nv_bfloat16* v_cache = nullptr;
  __nv_bfloat16* out = nullptr;            // (T, n_heads*D)
  const int32_t* positions = nullptr;      // (T) position of each query; keys [0, pos] are visible
  const int32_t* block_tables = nullptr;   // (num_seqs, max_blocks_per_seq)
  const int32_t* items = nullptr;          // (num_items, 4)
  int max_blocks_per_seq = 0;
  int num_items = 0;
  int num_tokens = 0;  // T
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;    // 64 or 128
  int block_size = 0;
  float scale = 0.f;
  // Split-K: each item's keys are cut into num_splits chunks whose partial results
  // (partial_o (num_splits, T, n_heads, D), partial_ml (num_splits, T, n_heads, 2) f32) are then
  // merged. num_splits == 1 writes `out` directly and needs no partial buffers.
  int num_splits = 1;
  float* partial_o = nullptr;
  float* partial_ml = nullptr;
};

int attention_tokens_per_item(int n_heads, int n_kv_heads);

// Decode (one query token per sequence, token i belongs to sequence i) with GQA groups up to
// kDecodeMaxGroup: one block per (sequence, kv head, partition of partition_size keys) loads each
// key and value once for the whole group (tensor cores, one pass, online softmax). Sequences whose
// keys span several partitions write partials (partial_o (max_partitions, T, n_heads, D),
// partial_ml (max_partitions, T, n_heads, 2) f32, m in the log2 domain) and the last of their
// blocks to finish merges them (counting in `counters`); a single partition writes `out`
// directly. The grid is fixed by max_partitions (graph-friendly); blocks past a sequence's length
// exit at once. block_size must be a multiple of 16.
constexpr int kDecodeMaxGroup = 8;
constexpr int kDecodeMaxPartition = 512;
// Keys one warp of a decode block can take: a lane holds the cache offset of one of its 16-key
// tiles, so a block of W warps covers at most W * kDecodeKeysPerWarp keys.
constexpr int kDecodeKeysPerWarp = 512;
struct DecodeAttentionArgs {
  const __nv_bfloat16* q = nullptr;        // (T, n_heads*D)
  const __nv_bfloat16* k_cache = nullptr;  // this layer, (num_blocks, n_kv_heads, block_size, D)
  const __nv_bfloat16* v_cache = nullptr;
  __nv_bfloat16* out = nullptr;            // (T, n_heads*D)
  const int32_t* positions = nullptr;      // (T) keys [0, pos] are visible
  const int32_t* block_tables = nullptr;   // (T, max_blocks_per_seq)
  int max_blocks_per_seq = 0;
  int num_tokens = 0;                      // T = number of sequences
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;                        // 64 or 128
  int block_size = 0;                      // multiple of 16
  float scale = 0.f;
  // Multiple of 32, <= kDecodeMaxPartition; with max_partitions 1 and no cluster, up to every
  // lane's tile of every warp (warps * 512 keys: decode_one_block_warps).
  int partition_size = 0;
  int max_partitions = 0;
  // 0: sequences may be as long as the tables (max_blocks_per_seq * block_size), and the grid
  // covers that. > 0: no sequence of this launch is longer, nor of any replay of a graph that
  // captured it (the caller's guarantee: the backend picks one-block steps, and their graphs, by
  // the step's longest sequence); the grid need only cover this many keys.
  int max_kv_len = 0;
  float* partial_o = nullptr;
  float* partial_ml = nullptr;
  // (T, n_kv_heads) int32, all 0 before the first launch; every launch leaves them 0 again (the
  // merging block resets its counter), so one buffer serves every layer and graph replay.
  int32_t* counters = nullptr;
  // Warps per block, 4 or 8, or 1 or 2 off cluster mode (at most warps * 512 keys per block);
  // 0 = decode_warps(num_tokens, n_kv_heads).
  int warps = 0;
  // > 0: every sequence is cut into partitions of exactly this many keys (benchmarks of the
  // partition policy); 0: the policy (sequence_partition in decode_attention.cu). A multiple of 32,
  // >= partition_size.
  int fixed_partition = 0;
  // > 1: cluster mode (sm_90 thread-block clusters). The grid's z extent is `cluster` blocks per
  // (sequence, kv head), one cluster; a sequence's keys are cut into at most `cluster` equal runs
  // of whole 16-key tiles (fewer when it is short: the split rule beside kClusterOneBlockTiles in
  // decode_attention.cu), and the blocks merge their partial results through distributed shared
  // memory: no partial buffers, no counters, no second pass through L2. partition_size /
  // max_partitions / partials / counters are unused.
  // 2, 4 or 8; kv lengths up to cluster * warps * 512 keys (decode_cluster_ok).
  int cluster = 0;
  // Cluster mode: a sequence is split only where every block in use gets at least this many
  // 16-key tiles per warp (0: the kernel's default, kClusterMinTilesPerWarp; benchmarks vary it).
  int cluster_min_tiles = 0;
  // The step's linears are cuBLASLt GEMMs or tensor-core linears (not GEMVs): the launch prefers
  // the largest shared memory, as its neighbours do (pdl.cuh LaunchOptions::max_shared).
  bool max_shared = false;
};

// Cluster size for a decode step of a batch bucket (the backend's policy): 8 up to 8 (sequence,
// kv head) pairs, 4 up to 16, else 2; where that cluster cannot cover max_kv_len keys
// (decode_cluster_ok with decode_warps' warps), the next larger one that can; 1 (the partition
// path above) when none can.
int decode_cluster(int num_tokens, int n_kv_heads, int max_kv_len);
// Whether cluster mode can cover sequences of max_kv_len keys with `warps` warps per block.
bool decode_cluster_ok(int cluster, int warps, int max_kv_len);

// One block per (sequence, kv head) for a whole decode step: returns the warps per block (2 or 4)
// when the step should run that way, else 0 (the bucket's cluster or partition policy). Such a
// step sets warps, partition_size = warps * 512 (every lane's tile of every warp),
// max_partitions 1 and no cluster. Depends on the step's longest sequence, so the backend keeps
// a graph per bucket for each choice. Many pairs fill the GPU without splitting a sequence, and
// splitting costs blocks that wait at cluster barriers or merge through L2 (or, for short
// sequences, sit empty): from 128 pairs up for sequences up to 2048 keys, from 32 pairs up for
// sequences up to kDecodeMaxPartition keys; from 512 pairs, up to 1024 keys, 2-warp blocks.
int decode_one_block_warps(int num_tokens, int n_kv_heads, int max_kv_len);

// Keys per decode partition: the smallest power of two (64..kDecodeMaxPartition) that still gives
// about two blocks per SM when every sequence is max_kv_len long. Fixed per batch bucket so eager
// and graph runs launch the same grid.
int decode_partition_size(int num_tokens, int n_kv_heads, int max_kv_len, int num_sms);

// Warps per decode-attention block: 8 when the step has at most 16 (sequence, kv head) pairs
// (batch-1 decode is latency: twice the warps halve each warp's chain of tiles), else 4. A function
// of the batch bucket only, so eager and graph runs of a bucket launch the same kernel.
int decode_warps(int num_tokens, int n_kv_heads);

void decode_attention(const DecodeAttentionArgs& a, cudaStream_t stream);

void paged_attention(const AttentionArgs& a, cudaStream_t stream);

}  // namespace mpserve::backend::cuda
