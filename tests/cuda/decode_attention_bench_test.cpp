// Timing of the decode attention kernel alone on Qwen2.5 head shapes (DISABLED_: run on the GPU
// machine with --gtest_also_run_disabled_tests --gtest_filter='*DecodeAttentionBench*'). Random
// bf16 q and KV, cache blocks randomly permuted, partition as the backend picks it for
// max_len; per launch, median of 15 replays of a 20-launch CUDA graph (L2 evicted before each
// replay, launches rotating over cache copies). One parseable line per configuration:
// BENCH kernel=decode_attention shape=... batch=... ctx=... max_len=... partition=... us=...
// us_min=... us_max=... GBps=... (GBps: K + V bytes read / median time).
#include <gtest/gtest.h>

#include <cstdio>

#include "backend/cuda/kernel_test_api.h"

namespace mpserve {
namespace {

namespace api = backend::cuda::test_api;

struct HeadShape {
  const char* name;
  int n_heads, n_kv_heads, head_dim;
};

struct Case {
  int batch, ctx, max_len;
};

TEST(DecodeAttentionBench, DISABLED_qwen25_head_shapes) {
  if (!api::gpu_available()) GTEST_SKIP() << "no CUDA device";
  const HeadShape shapes[] = {{"qwen2.5-0.5b", 14, 2, 64}, {"qwen2.5-3b", 16, 2, 128}, {"qwen2.5-7b", 28, 4, 128}};
  // max_len as bench offline runs it (context + output + slack), plus one 32k server setting where
  // most of the grid's partitions exit at once.
  const Case cases[] = {{1, 512, 2112},     {1, 2048, 2112},   {1, 8192, 8400},  {64, 128, 2112},
                        {64, 2048, 2112},  {256, 128, 2112},  {256, 2048, 2112}, {1, 512, 32768},
                        {256, 2048, 32768}};
  for (const HeadShape& h : shapes) {
    for (const Case& c : cases) {
      const api::DecodeAttentionBench r =
          api::decode_attention_bench(h.n_heads, h.n_kv_heads, h.head_dim, c.batch, c.ctx, c.max_len, 15, 1234);
      std::printf(
          "BENCH kernel=decode_attention shape=%s batch=%d ctx=%d max_len=%d partition=%d max_partitions=%d "
          "warps=%d cluster=%d kv_copies=%d us=%.2f us_min=%.2f us_max=%.2f GBps=%.0f\n",
          h.name, c.batch, c.ctx, c.max_len, r.partition_size, r.max_partitions, r.warps, r.cluster, r.kv_copies,
          r.us_median,
          r.us_min, r.us_max, r.kv_bytes / (r.us_median * 1e3));
      std::fflush(stdout);
      EXPECT_GT(r.us_median, 0.0);
    }
  }
}

// Small batches: every partition size (exactly that many keys per block, at every context) at a
// few contexts, with 4 and 8 warps per block, to set the partition and warp policies
// (decode_partition_size, sequence_partition, decode_warps); the policies' own choice is the last
// line of each case (partition=policy).
TEST(DecodeAttentionBench, DISABLED_partition_sweep_small_batch) {
  if (!api::gpu_available()) GTEST_SKIP() << "no CUDA device";
  const HeadShape shapes[] = {{"qwen2.5-0.5b", 14, 2, 64}, {"qwen2.5-1.5b", 12, 2, 128}, {"qwen2.5-3b", 16, 2, 128},
                              {"qwen2.5-7b", 28, 4, 128}};
  const Case cases[] = {{1, 160, 2112},  {1, 300, 2112},  {1, 544, 2112}, {1, 1100, 2112}, {1, 2080, 2112},
                        {1, 8192, 8400}, {8, 544, 2112},  {8, 2048, 2112}, {8, 8192, 8400}};
  for (const HeadShape& h : shapes)
    for (const Case& c : cases)
      for (int part : {64, 128, 256, 512})
        for (int warps : {4, 8}) {
          const api::DecodeAttentionBench r = api::decode_attention_bench(
              h.n_heads, h.n_kv_heads, h.head_dim, c.batch, c.ctx, c.max_len, 15, 1234, part, warps, /*cluster=*/1);
          std::printf(
              "BENCH kernel=decode_attention_sweep shape=%s batch=%d ctx=%d partition=%d warps=%d us=%.2f GBps=%.0f\n",
              h.name, c.batch, c.ctx, part, warps, r.us_median, r.kv_bytes / (r.us_median * 1e3));
          std::fflush(stdout);
          EXPECT_GT(r.us_median, 0.0);
        }
  // Cluster mode: 2/4/8 blocks per (sequence, kv head), splitting where each block in use gets at
  // least min_tiles 16-key tiles per warp.
  for (const HeadShape& h : shapes)
    for (const Case& c : cases)
      for (int cluster : {2, 4, 8})
        for (int warps : {4, 8})
          for (int min_tiles : {1, 2, 3, 4}) {
            const api::DecodeAttentionBench r =
                api::decode_attention_bench(h.n_heads, h.n_kv_heads, h.head_dim, c.batch, c.ctx, c.max_len, 15, 1234, 0,
                                            warps, cluster, min_tiles);
            std::printf(
                "BENCH kernel=decode_attention_sweep shape=%s batch=%d ctx=%d partition=cluster%d_min%d warps=%d "
                "us=%.2f GBps=%.0f\n",
                h.name, c.batch, c.ctx, r.cluster, min_tiles, warps, r.us_median, r.kv_bytes / (r.us_median * 1e3));
            std::fflush(stdout);
          }
  for (const HeadShape& h : shapes)
    for (const Case& c : cases) {
      const api::DecodeAttentionBench r =
          api::decode_attention_bench(h.n_heads, h.n_kv_heads, h.head_dim, c.batch, c.ctx, c.max_len, 15, 1234);
      std::printf(
          "BENCH kernel=decode_attention_sweep shape=%s batch=%d ctx=%d partition=policy warps=%d us=%.2f GBps=%.0f\n",
          h.name, c.batch, c.ctx, r.warps, r.us_median, r.kv_bytes / (r.us_median * 1e3));
      std::fflush(stdout);
    }
}

// Larger batches: the partition path (the policy's partition, cluster 1) against clusters of 2
// and 4 (4 warps), to set where decode_cluster stops using clusters.
TEST(DecodeAttentionBench, DISABLED_cluster_sweep_mid_batch) {
  if (!api::gpu_available()) GTEST_SKIP() << "no CUDA device";
  const HeadShape shapes[] = {{"qwen2.5-0.5b", 14, 2, 64}, {"qwen2.5-3b", 16, 2, 128}, {"qwen2.5-7b", 28, 4, 128}};
  for (const HeadShape& h : shapes)
    for (int batch : {16, 32, 64, 256})
      for (int ctx : {544, 2048})
        for (int cluster : {1, 2, 4}) {
          const api::DecodeAttentionBench r = api::decode_attention_bench(h.n_heads, h.n_kv_heads, h.head_dim, batch,
                                                                          ctx, 2112, 15, 1234, 0, 4, cluster);
          std::printf("BENCH kernel=decode_attention_cluster shape=%s batch=%d ctx=%d cluster=%d warps=4 us=%.2f GBps=%.0f\n",
                      h.name, batch, ctx, r.cluster, r.us_median, r.kv_bytes / (r.us_median * 1e3));
          std::fflush(stdout);
          EXPECT_GT(r.us_median, 0.0);
        }
}

const HeadShape kQwen25Shapes[] = {{"qwen2.5-0.5b", 14, 2, 64},
                                   {"qwen2.5-1.5b", 12, 2, 128},
                                   {"qwen2.5-3b", 16, 2, 128},
                                   {"qwen2.5-7b", 28, 4, 128}};

// One parseable line for a configuration of the sweeps below.
void print_row(const char* kernel, const HeadShape& h, int batch, int ctx, const char* config,
               const api::DecodeAttentionBench& r) {
  std::printf(
      "BENCH kernel=%s shape=%s batch=%d ctx=%d config=%s cluster=%d warps=%d max_partitions=%d us=%.2f GBps=%.0f\n",
      kernel, h.name, batch, ctx, config, r.cluster, r.warps, r.cluster > 1 ? r.cluster : r.max_partitions, r.us_median,
      r.kv_bytes / (r.us_median * 1e3));
  std::fflush(stdout);
  EXPECT_GT(r.us_median, 0.0);
}

// Large batches at short contexts (the batch-64/256 rows of bench offline, max_len = ctx + 64 as
// it sizes them): the policy against the partition path without empty blocks, clusters of 2 and
// 4, and 8-warp blocks.
TEST(DecodeAttentionBench, DISABLED_short_context_large_batch) {
  if (!api::gpu_available()) GTEST_SKIP() << "no CUDA device";
  struct Config {
    const char* name;
    int warps, cluster, min_tiles;
  };
  const Config configs[] = {{"policy", 0, 0, 0},    {"part4w", 4, 1, 0}, {"part8w", 8, 1, 0},
                            {"clu2_4w", 4, 2, 0},   {"clu4_4w", 4, 4, 0}, {"clu2_4w_min4", 4, 2, 4}};
  for (const HeadShape& h : kQwen25Shapes)
    for (int batch : {64, 256})
      for (int ctx : {150, 300, 560})
        for (const Config& c : configs)
          print_row("decode_attention_short", h, batch, ctx, c.name,
                    api::decode_attention_bench(h.n_heads, h.n_kv_heads, h.head_dim, batch, ctx, ctx + 64, 9, 1234, 0,
                                                c.warps, c.cluster, c.min_tiles));
}

// One block per (sequence, kv head) for the whole sequence (the partition path with one partition,
// no empty blocks) in 4-warp blocks against the cluster policy, from batch 16 to 256.
TEST(DecodeAttentionBench, DISABLED_one_block_per_sequence) {
  if (!api::gpu_available()) GTEST_SKIP() << "no CUDA device";
  for (const HeadShape& h : kQwen25Shapes)
    for (int batch : {16, 32, 64, 128, 256})
      for (int ctx : {150, 300, 450, 700, 1000, 1500})
        for (bool one : {false, true}) {
          const int max_len = ctx + 64;
          print_row("decode_attention_one", h, batch, ctx, one ? "one" : "policy",
                    api::decode_attention_bench(h.n_heads, h.n_kv_heads, h.head_dim, batch, ctx, max_len, 9, 1234,
                                                one ? (max_len + 31) / 32 * 32 : 0, one ? 4 : 0, one ? 1 : 0));
        }
}

// One block per (sequence, kv head) with 1, 2 or 4 warps (1 warp: up to 512 keys, 2: 1024):
// lighter blocks put more sequences on an SM at once.
TEST(DecodeAttentionBench, DISABLED_one_block_warps) {
  if (!api::gpu_available()) GTEST_SKIP() << "no CUDA device";
  for (const HeadShape& h : kQwen25Shapes)
    for (int batch : {32, 64, 128, 256})
      for (int ctx : {150, 300, 450, 700, 950})
        for (int warps : {1, 2, 4}) {
          const int max_len = ctx + 64;
          if (max_len > warps * 512) continue;
          print_row("decode_attention_one_warps", h, batch, ctx, warps == 1 ? "1w" : warps == 2 ? "2w" : "4w",
                    api::decode_attention_bench(h.n_heads, h.n_kv_heads, h.head_dim, batch, ctx, max_len, 9, 1234,
                                                warps * 512, warps, 1));
        }
}

}  // namespace
}  // namespace mpserve
