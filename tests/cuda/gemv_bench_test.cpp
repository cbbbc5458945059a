// Timing of the small-batch GEMV (gemv.cu) against cuBLASLt on the decode linears of Qwen2.5
// 0.5B / 3B / 7B at batch 1, 4, 8, and of a chain of attention-less decoder layers in one CUDA
// graph (fused GEMV path vs the cuBLASLt path). DISABLED_: run on the GPU machine with
//   test_cuda --gtest_also_run_disabled_tests --gtest_filter='*GemvBench*'
// and once more with MPSERVE_CUDA_PDL=0 for the launches without programmatic dependent launch.
// One parseable line per measurement:
//   BENCH kernel=... shape=... rows=... us=... GBps=... (spread, plan, pdl)
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <string>

#include "backend/cuda/kernel_test_api.h"

namespace mpserve {
namespace {

namespace api = backend::cuda::test_api;

struct ModelShape {
  const char* name;
  int hidden, q_dim, kv_dim, inter;
};
constexpr ModelShape kShapes[] = {
    {"0.5b", 896, 896, 128, 4864},
    {"1.5b", 1536, 1536, 256, 8960},
    {"3b", 2048, 2048, 256, 11008},
    {"7b", 3584, 3584, 512, 18944},
};
constexpr int kVocab = 151936;
constexpr int kRepeats = 50;

void print(const char* kernel, const std::string& shape, int rows, const api::GemvBench& b) {
  std::printf(
      "BENCH kernel=%s shape=%s rows=%d us=%.2f GBps=%.0f us_min=%.2f us_max=%.2f n_tiles=%d warps=%d grid=%d "
      "bn=%d split=%d launches=%d pdl=%d\n",
      kernel, shape.c_str(), rows, b.us_median, b.weight_bytes / (b.us_median * 1e3), b.us_min, b.us_max, b.n_tiles,
      b.warps, b.grid, b.bn, b.split, b.launches, api::pdl_enabled() ? 1 : 0);
  std::fflush(stdout);
}

// A decoder layer's decode linears and the LM head, with the GEMV mode each runs in.
struct Linear {
  const char* name;
  api::GemvMode mode;
  int in, out;
};
std::array<Linear, 5> decode_linears(const ModelShape& m) {
  return {{
      {"qkv", api::GemvMode::kNormF32, m.hidden, m.q_dim + 2 * m.kv_dim},
      {"o", api::GemvMode::kAddF32, m.q_dim, m.hidden},
      {"gate_up", api::GemvMode::kNormSwiGlu, m.hidden, m.inter},
      {"down", api::GemvMode::kAddF32, m.inter, m.hidden},
      {"lm_head", api::GemvMode::kNormF32, m.hidden, kVocab},
  }};
}

class GemvBench : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!api::gpu_available()) GTEST_SKIP() << "no CUDA device";
  }
};

// Each decode linear alone: the fused GEMV (its prologue/epilogue included) vs the cuBLASLt GEMM
// of the same matrix (the norm / SiLU / add kernels it would need are not counted).
TEST_F(GemvBench, DISABLED_linears_vs_cublaslt) {
  for (const ModelShape& m : kShapes) {
    for (const Linear& l : decode_linears(m)) {
      const std::string shape = std::string(m.name) + "_" + l.name + "_" + std::to_string(l.in) + "x" +
                                std::to_string(l.mode == api::GemvMode::kNormSwiGlu ? 2 * l.out : l.out);
      for (int rows : {1, 4, 8}) {
        print("gemv", shape, rows, api::gemv_bench(l.mode, false, rows, l.in, l.out, kRepeats));
        print("cublaslt", shape, rows, api::gemv_bench(l.mode, true, rows, l.in, l.out, kRepeats));
      }
    }
  }
}

// The tensor-core decode linear (mma_linear.cuh) against cuBLASLt at 1..64 rows, the launcher's
// plan and, for retuning mma_linear_plan, every tile width with splits 1, 2, 4, 8. The norm
// modes include the mma path's rms_norm launch; cuBLASLt's rows leave out its norm / SiLU /
// add kernels.
TEST_F(GemvBench, DISABLED_mma_linears_vs_cublaslt) {
  constexpr int kMmaRepeats = 15;  // 360 measurements: keep the run within a few minutes
  for (const ModelShape& m : kShapes) {
    for (const Linear& l : decode_linears(m)) {
      const std::string shape = std::string(m.name) + "_" + l.name;
      for (int rows : {1, 8, 16, 32, 64}) {
        print("mma", shape, rows, api::gemv_bench(l.mode, false, rows, l.in, l.out, kMmaRepeats, 0, 0, 0, true));
        print("cublaslt", shape, rows, api::gemv_bench(l.mode, true, rows, l.in, l.out, kMmaRepeats));
        if (rows != 64) continue;
        for (int bn : {64, 128})
          for (int split : {1, 2, 4, 8})
            print("mma_plan", shape, rows,
                  api::gemv_bench(l.mode, false, rows, l.in, l.out, kMmaRepeats, 0, 0, 0, true, bn, split));
      }
    }
  }
}

// The wgmma decode linear alone (48 and 64 rows, the launcher's plan, and at 64 rows every split
// of 128-row tiles) against cuBLASLt, every decoder linear of every shape: a short run, for A/B
// of the kernel's variants. The norm modes include the mma path's rms_norm launch.
TEST_F(GemvBench, DISABLED_wgmma_linears_vs_cublaslt) {
  constexpr int kMmaRepeats = 30;
  for (const ModelShape& m : kShapes) {
    for (const Linear& l : decode_linears(m)) {
      const bool lm_head = std::string(l.name) == "lm_head";
      const std::string shape = std::string(m.name) + "_" + l.name;
      for (int rows : {48, 64}) {
        if (lm_head && rows != 64) continue;
        print("mma", shape, rows, api::gemv_bench(l.mode, false, rows, l.in, l.out, kMmaRepeats, 0, 0, 0, true));
        print("cublaslt", shape, rows, api::gemv_bench(l.mode, true, rows, l.in, l.out, kMmaRepeats));
      }
      for (int split : {1, 2, 3, 4, 6, 8})
        if (!lm_head)
          print("mma_plan", shape, 64,
              api::gemv_bench(l.mode, false, 64, l.in, l.out, kMmaRepeats, 0, 0, 0, true, 128, split));
    }
  }
}

// Tile height and warps per block around the launcher's choice, for retuning gemv_plan.
TEST_F(GemvBench, DISABLED_plan_sweep) {
  for (const ModelShape& m : {kShapes[0], kShapes[3]}) {  // 0.5b, 7b
    const std::string qkv = std::string(m.name) + "_qkv";
    const std::string down = std::string(m.name) + "_down";
    for (int rows : {1, 8}) {
      for (int n_tiles : {1, 2, 4}) {
        for (int warps : {4, 7, 8, 14, 16}) {
          print("gemv_sweep", qkv, rows,
                api::gemv_bench(api::GemvMode::kNormF32, false, rows, m.hidden, m.q_dim + 2 * m.kv_dim, kRepeats,
                                n_tiles, warps));
          print("gemv_sweep", down, rows,
                api::gemv_bench(api::GemvMode::kAddF32, false, rows, m.inter, m.hidden, kRepeats, n_tiles, warps));
        }
      }
    }
  }
}

// Every decode linear at one row under tile heights 1, 2, 4 (gate/up: 4, 8 or 16 outputs a tile)
// and 1..16 warps per block (the launcher's own plan first): how much of a GEMV's time is the
// per-tile reduction and barrier, against the weight loads in flight.
TEST_F(GemvBench, DISABLED_batch1_plan_sweep) {
  for (const ModelShape& m : kShapes) {
    for (const Linear& l : decode_linears(m)) {
      if (std::string(l.name) == "lm_head") continue;
      const std::string shape = std::string(m.name) + "_" + l.name;
      print("gemv_b1_auto", shape, 1, api::gemv_bench(l.mode, false, 1, l.in, l.out, kRepeats));
      for (int n_tiles : {1, 2, 4})
        for (int warps : {1, 2, 4, 8, 16})
          print("gemv_b1_sweep", shape, 1, api::gemv_bench(l.mode, false, 1, l.in, l.out, kRepeats, n_tiles, warps));
    }
  }
}

// The LM head (RMSNorm + vocab GEMV) at one row: tile heights 1, 2, 4 x 4, 8, 16 warps around the
// launcher's plan (its 18,992 one-n-tile tiles loop ~72 times over the resident blocks).
TEST_F(GemvBench, DISABLED_lm_head_plan_sweep) {
  for (const ModelShape& m : kShapes) {
    const std::string shape = std::string(m.name) + "_lm_head";
    print("gemv_lm_auto", shape, 1, api::gemv_bench(api::GemvMode::kNormF32, false, 1, m.hidden, kVocab, kRepeats));
    for (int n_tiles : {1, 2, 4})
      for (int warps : {4, 8, 16})
        print("gemv_lm_sweep", shape, 1,
              api::gemv_bench(api::GemvMode::kNormF32, false, 1, m.hidden, kVocab, kRepeats, n_tiles, warps));
  }
}

// Every linear at one row with the launcher's grid (as many blocks as stay resident) and with the
// grid that gives every block the same number of tiles in as many rounds (ceil(tiles / rounds)):
// the second leaves SMs partly idle in every round instead of most of them in the last one.
TEST_F(GemvBench, DISABLED_balanced_grid) {
  for (const ModelShape& m : kShapes) {
    struct TiledLinear {
      const char* name;
      api::GemvMode mode;
      int in, out, outputs_per_tile;
    };
    const TiledLinear linears[] = {
        {"qkv", api::GemvMode::kNormF32, m.hidden, m.q_dim + 2 * m.kv_dim, 8},
        {"o", api::GemvMode::kAddF32, m.q_dim, m.hidden, 8},
        {"gate_up", api::GemvMode::kNormSwiGlu, m.hidden, m.inter, 8},
        {"down", api::GemvMode::kAddF32, m.inter, m.hidden, 8},
    };
    for (const TiledLinear& l : linears) {
      const std::string shape = std::string(m.name) + "_" + l.name;
      const api::GemvBench full = api::gemv_bench(l.mode, false, 1, l.in, l.out, kRepeats);
      print("gemv_grid_full", shape, 1, full);
      const int tiles = (l.out + l.outputs_per_tile - 1) / l.outputs_per_tile;
      const int rounds = (tiles + full.grid - 1) / full.grid;
      const int balanced = (tiles + rounds - 1) / rounds;
      if (balanced != full.grid)
        print("gemv_grid_balanced", shape, 1, api::gemv_bench(l.mode, false, 1, l.in, l.out, kRepeats, 0, 0, balanced));
    }
  }
}

// Layers without attention back to back in one graph: with PDL the GEMVs' weight streams start
// while the kernel before drains (compare the pdl=1 and pdl=0 runs); per-layer time and the
// layer's weight bytes / time.
TEST_F(GemvBench, DISABLED_layer_chain_fused_vs_cublaslt) {
  constexpr int kLayers = 6;  // 24 launches on the fused path
  for (const ModelShape& m : kShapes) {
    for (int rows : {1, 4, 8}) {
      const std::string shape = std::string(m.name) + "_layer_x" + std::to_string(kLayers);
      print("chain_gemv", shape, rows,
            api::layer_chain_bench(true, rows, m.hidden, m.q_dim, m.kv_dim, m.inter, kLayers, kRepeats));
      print("chain_cublaslt", shape, rows,
            api::layer_chain_bench(false, rows, m.hidden, m.q_dim, m.kv_dim, m.inter, kLayers, kRepeats));
    }
    for (int rows : {16, 64}) {
      const std::string shape = std::string(m.name) + "_layer_x" + std::to_string(kLayers);
      print("chain_mma", shape, rows,
            api::layer_chain_bench(true, rows, m.hidden, m.q_dim, m.kv_dim, m.inter, kLayers, kRepeats, true));
      print("chain_cublaslt", shape, rows,
            api::layer_chain_bench(false, rows, m.hidden, m.q_dim, m.kv_dim, m.inter, kLayers, kRepeats));
    }
  }
}

}  // namespace
}  // namespace mpserve
