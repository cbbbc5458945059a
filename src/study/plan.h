// The study's options and its plan: which `mpserve serve` configurations to start and which
// (context x workload x repeat) windows to measure against each, minus those already in
// results.csv.
#pragma once

#include <cstdint>
#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include "common/status.h"
#include "model/config.h"
#include "study/machine.h"
#include "study/results.h"

namespace mpserve::study {

// Flags as typed: empty strings and negative numbers mean "the default for this device / --quick".
struct StudyFlags {
  std::string shapes, contexts, workloads, engines, mps, ablations;
  int repeats = -1;
  double warmup_s = -1, window_s = -1;
  std::string device = "auto";
  std::string models_dir, out_dir;
  bool quick = false;
  bool cpu_overhead = false;
  std::string cpu_overhead_shape;
  int64_t step_cpu_us = -1;
  int cpu_overhead_context = -1;
  bool report_only = false, dry_run = false;
  std::string concurrency;  // "decode=64,prefill=16" or one number for both
  int decode_output_len = -1;
  int max_num_batched_tokens = -1;
  double ready_timeout_s = 600;
  std::string commit;
  std::string command_line;  // the command as typed, for the report
  std::string model_dir;     // --model: a model directory studied instead of --shapes
};

struct StudyOptions {
  std::string device;  // cpu | cuda
  std::vector<std::string> shapes;
  std::vector<int> contexts;
  std::vector<std::string> workloads;  // decode | prefill
  std::vector<int> engines;            // ascending, always starts with 1
  std::vector<std::string> mps;        // on | off, for N > 1 engines; 1 engine runs once (see plan)
  std::vector<std::string> ablations;  // full | attention | mlp (what remains of the model)
  int repeats = 3;
  double warmup_s = 5, window_s = 15;
  std::filesystem::path models_dir, out_dir;
  bool quick = false;
  bool cpu_overhead = false;
  std::string cpu_overhead_shape;
  int64_t step_cpu_us = 0;
  int cpu_overhead_context = 0;
  bool report_only = false, dry_run = false;
  int decode_concurrency = 64, prefill_concurrency = 16;
  int decode_output_len = 256;
  int max_num_batched_tokens = 8192;
  double ready_timeout_s = 600;
  std::string commit;
  std::string command_line;
  // A model directory measured instead of make-model shapes (`mpserve advise --probe --model DIR`):
  // `shapes` then holds only `model_label`, which names it in results.csv.
  std::filesystem::path model_dir;
  std::string model_label;
};

// The config of a shape of the study: make-model's, or the custom model's (o.model_dir).
Result<model::ModelConfig> study_shape_config(const StudyOptions& o, const std::string& shape);

// Applies device and --quick defaults and validates; an error here is a usage error (exit 2).
// `device_auto_is_cuda` decides --device auto.
Result<StudyOptions> resolve_options(const StudyFlags& flags, bool device_auto_is_cuda);

// One `mpserve serve` start.
struct ServerConfig {
  std::string shape;
  int engines = 1;
  std::string mps = "off";
  std::string ablation = "full";
  int async = 0;
  int64_t step_cpu_us = 0;
  // Engine limits: the largest of this configuration's cells.
  int max_model_len = 0;
  int max_num_seqs = 0;
  // File-name-safe label: qwen2.5-0.5b_e2_mps-on_full_a0_s0.
  std::string label() const;
};

// One measured window.
struct Cell {
  ResultRow row;  // parameters filled (gpu, device, shape, ..., repeat, concurrency, lengths); no measurements
  bool measured = false;  // already in results.csv
};

struct ServerGroup {
  ServerConfig server;
  std::vector<Cell> cells;
  int todo() const;
};

struct Plan {
  std::vector<ServerGroup> groups;
  int cells_total = 0;
  int cells_todo = 0;
  int servers_to_start = 0;
  double estimated_s = 0;  // for the cells still to do, including model creation and server starts
};

// Requests in flight for a cell: the workload's --concurrency, capped (CUDA, known GPU memory) so
// that the largest engine count of the study holds every sequence in its KV cache; the same for
// every engine count, so 1 and N engines get the same work.
int cell_concurrency(const StudyOptions& o, const MachineInfo& m, const std::string& shape, int context,
                     const std::string& workload);

// Builds the plan; `measured` holds measurement_key() of the rows already in results.csv.
// `models_cached` lists shapes whose model directory exists (for the time estimate only).
Result<Plan> make_plan(const StudyOptions& o, const MachineInfo& m, const std::set<std::string>& measured,
                       const std::set<std::string>& models_cached);

// Human-readable plan (for --dry-run and the start of a run).
std::string describe_plan(const Plan& plan, const StudyOptions& o, const MachineInfo& m);

// Parameter count of a shape, in billions (0 for an unknown shape).
double shape_params_b(const StudyOptions& o, const std::string& shape);

}  // namespace mpserve::study
