// bench offline: fixed-seed random prompts of exactly L tokens, exactly O generated tokens each
// (ignore_eos, greedy), through the Engine; prefill and decode throughput, decode step time, host
// time per decode step, and the fraction of the card's measured ceilings reached.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "common/status.h"
#include "engine/engine.h"

namespace mpserve::bench {

struct OfflineBenchOptions {
  std::vector<int> batches;     // every batch size B x every input length L is one configuration
  std::vector<int> input_lens;
  int output_len = 64;          // O >= 2 (one token comes from the prefill step)
  int repeats = 3;
  int warmup = 1;               // untimed runs per configuration, with 16-token prompts (graphs, plans)
  uint64_t seed = 0;
  bool profile = false;         // one extra eager run per configuration with per-kernel device times
  std::string model_label;      // printed as model=...
};

// One configuration's numbers: medians over repeats, and each metric's spread (max - min) / median.
struct OfflineBenchResult {
  int batch = 0, input_len = 0, output_len = 0, repeats = 0;
  double prefill_tok_s = 0, prefill_tok_s_spread = 0;
  double decode_tok_s = 0, decode_tok_s_spread = 0;
  double decode_step_ms = 0, decode_step_ms_spread = 0;
  double host_us_per_step = -1;  // -1: the backend does not time its steps
  // The median decode step's host time (median over repeats of each run's median): the mean above
  // takes every OS hiccup of the host whole, a few ms spread over a run's few dozen steps.
  double host_us_p50 = -1;
  // Of host_us_per_step: the backend's own share (packing, enqueueing, reading results back), and
  // of that the CUDA calls that enqueue the step; the rest of the host time is the engine's.
  double backend_host_us_per_step = -1;
  double enqueue_us_per_step = -1;
  // Async scheduling: host time per decode step between collecting one step and launching the
  // next (the device idles); the rest of host_us_per_step overlaps the device. -1 in sync mode.
  double gap_us_per_step = -1;
  // Async scheduling: the share of the decode steps that were launched before the step before them
  // was collected (the engine's launch-ahead path; a backend with one step in flight: 0). -1 in sync mode.
  double launched_ahead_frac = -1;
  double decode_bytes_per_step = 0, prefill_flops = 0;
  double decode_roofline_frac = -1, prefill_peak_frac = -1;  // -1: ceilings n/a
  // The other floor of a decode step: its FLOPs at the measured bf16 GEMM peak. At batch 1 it is
  // far below the bytes' time; at batch 256 and short contexts the two are about equal, so the
  // bandwidth roofline (decode_roofline_frac, the target) cannot be approached there
  // unless the GEMMs also run near their peak. decode_compute_frac = (flops / peak) / step;
  // decode_floor_frac = max(bytes / bandwidth, flops / peak) / step (-1: ceilings n/a).
  double decode_flops_per_step = 0;
  double decode_compute_frac = -1, decode_floor_frac = -1;
};

// Weights read by one decode step (every layer, the final norm, the LM head), in bytes (bf16).
double decode_weight_bytes(const model::ModelConfig& c);
// KV bytes read by one decode step of `batch` sequences holding `ctx` tokens each.
double decode_kv_bytes(const model::ModelConfig& c, int batch, double ctx);
// FLOPs of one decode step of `batch` sequences holding `ctx` tokens each: the projections and
// the LM head for one token per sequence, and attention's QK^T and PV over ctx keys.
double decode_flops(const model::ModelConfig& c, int batch, double ctx);
// FLOPs of prefilling `batch` prompts of `len` tokens (projections, causal attention, LM head of
// the last token of each).
double prefill_flops(const model::ModelConfig& c, int batch, int len);

// Runs every configuration on `eng` and prints a human-readable line per repeat and, last, one
// parseable `bench_offline: key=value ...` line per configuration to `out`.
Result<std::vector<OfflineBenchResult>> run_offline_bench(engine::Engine& eng, int32_t tokenizer_vocab,
                                                          const OfflineBenchOptions& o, std::FILE* out);

}  // namespace mpserve::bench
