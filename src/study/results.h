// The study's results.csv: one row per measured window, its reader and writer, and the
// aggregation every consumer needs (median and spread over repeats, gain of N engines over one,
// the expected full-model gain from the two ablations). `mpserve study` writes it; the report and
// `mpserve advise` read it through this header only.
//
// Cell = every parameter of a measurement except the repeat index (and the window lengths, which
// are how it was measured, not what): gpu, device, shape, context, workload, engines, mps,
// ablation, async, step_cpu_us, concurrency, input_len, output_len.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace mpserve::study {

// The exact header line (no newline). Columns may be appended at the end, never renamed or moved.
inline constexpr std::string_view kResultsHeader =
    "timestamp,gpu,driver,cuda,commit,device,shape,params_b,context,workload,engines,mps,ablation,async,"
    "step_cpu_us,repeat,concurrency,input_len,output_len,warmup_s,window_s,completed,failed,input_tok_s,"
    "output_tok_s,throughput,ttft_p50_ms,tpot_p50_ms";

struct ResultRow {
  std::string timestamp;    // UTC, ISO 8601 (2025-01-31T12:00:00Z)
  std::string gpu;          // nvidia-smi name, or "cpu (<model name>)"
  std::string driver;       // "none" on CPU
  std::string cuda;         // "none" on CPU
  std::string commit;       // git short hash (+"-dirty"), or "unknown"
  std::string device;       // cpu | cuda
  std::string shape;        // tiny | qwen2.5-0.5b | ...
  double params_b = 0;      // parameter count in billions
  int context = 0;          // prompt length in tokens
  std::string workload;     // decode | prefill
  int engines = 1;
  std::string mps;          // on | off
  std::string ablation;     // full | attention (MLP removed) | mlp (attention removed)
  int async = 0;            // 0 | 1: engine --async-scheduling
  int64_t step_cpu_us = 0;  // engine --step-cpu-us
  int repeat = 0;           // 0-based repeat index
  int concurrency = 0;      // requests in flight (closed loop), the same for 1 and N engines
  int input_len = 0;
  int output_len = 0;
  double warmup_s = 0;
  double window_s = 0;
  int64_t completed = 0;
  int64_t failed = 0;
  double input_tok_s = 0;
  double output_tok_s = 0;
  double throughput = 0;    // the workload's metric: decode = output_tok_s, prefill = input_tok_s
  double ttft_p50_ms = 0;
  double tpot_p50_ms = 0;
};

// CSV text of one row (no newline); fields with ',' '"' or newlines are quoted (RFC 4180).
std::string format_result_row(const ResultRow& row);
Result<ResultRow> parse_result_row(std::string_view line);

// All rows of a results.csv; a missing file is an empty list. A header that does not start with
// kResultsHeader is an error; a last line cut short (a killed writer) is skipped with a warning.
Result<std::vector<ResultRow>> load_results(const std::filesystem::path& path);

// Appends rows to results.csv, writing the header first when the file is new or empty.
// Each append is flushed and fsync'ed, so a killed study loses at most the window in progress.
class ResultsWriter {
 public:
  static Result<ResultsWriter> open(const std::filesystem::path& path);
  Status append(const ResultRow& row);
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

// The workload's throughput metric name ("output tok/s" or "input tok/s").
std::string_view throughput_unit(std::string_view workload);

// Identity of a cell (all parameters but the repeat) and of one measurement (cell + repeat).
std::string cell_key(const ResultRow& row);
std::string measurement_key(const ResultRow& row);

struct Spread {
  double median = 0, min = 0, max = 0;
  int n = 0;
};
// Median (mean of the two middle values for an even count), min and max; n = 0 for no values.
Spread spread_of(std::vector<double> values);

// One cell, aggregated over its repeats. `first` carries the cell's parameters (its repeat,
// timestamp and measured values are those of the first row seen).
struct CellSummary {
  ResultRow first;
  Spread throughput;
  Spread input_tok_s, output_tok_s;
  double ttft_p50_ms = 0, tpot_p50_ms = 0;  // medians over repeats
  int64_t completed = 0, failed = 0;        // sums over repeats
};
// Cells in order of first appearance. A repeat measured twice (a resumed study that was told to
// re-measure) counts once: the later row wins.
std::vector<CellSummary> summarize(const std::vector<ResultRow>& rows);

// The 1-engine cell an N-engine cell is compared with: same gpu, device, shape, context, workload,
// ablation, async, step_cpu_us, concurrency, input_len, output_len, engines == 1; the same mps
// value when measured, else the other (the study runs the 1-engine baseline once, MPS off).
const CellSummary* find_baseline(const std::vector<CellSummary>& cells, const CellSummary& cell);

// Gain = throughput(N) / throughput(1) - 1 on medians; the range is the worst and best pairing
// of the repeats (min_N / max_1 - 1, max_N / min_1 - 1).
struct Gain {
  double median = 0, min = 0, max = 0;
};
std::optional<Gain> gain_of(const CellSummary& n_engines, const CellSummary& one_engine);

// Expected full-model gain from the ablations: the attention-only and MLP-only gains weighted by
// the share of the 1-engine step time each part takes, estimated from wall time per token
// (1 / 1-engine throughput) of the attention-only and the MLP-only model:
//   w_attn = t_attn / (t_attn + t_mlp), expected = w_attn * gain_attn + (1 - w_attn) * gain_mlp.
struct ExpectedGain {
  double w_attn = 0;
  double gain_attn = 0, gain_mlp = 0;
  double expected = 0;
};
ExpectedGain expected_gain(double tput1_attn_only, double tput1_mlp_only, double gain_attn_only, double gain_mlp_only);

// For an N-engine `full` cell: the expected gain from its `attention` and `mlp` siblings (same
// parameters otherwise) and their baselines, when all four are measured.
std::optional<ExpectedGain> expected_gain_for(const std::vector<CellSummary>& cells, const CellSummary& full_cell);

}  // namespace mpserve::study
