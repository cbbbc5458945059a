// The `mpserve advise` job (and `mpserve serve --engines auto`): find the study's results for this
// GPU type, turn them into gains, and ask the advisor; or measure the gain live (--probe).
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "common/status.h"
#include "study/advisor.h"
#include "study/results.h"

namespace mpserve::study {

// Where advice looks for study results, in order, when no file is named: $MPSERVE_STUDY_RESULTS,
// then the results shipped with the binary (<exe dir>/share/mpserve/study/*.csv in name order:
// build-time copies of docs/results/study*/results.csv, named after their directory). Only
// existing files are returned.
std::vector<std::filesystem::path> default_results_files();

// Gains of the full model (no ablation, no injected CPU cost, no async scheduling): every N-engine
// cell (MPS on; on CPU, where MPS does not exist, off) against its 1-engine baseline measured by
// the same engine build. Per GPU, workload and shape only the newest build's points are kept
// (the newest N-engine cell decides), so several studies can be read together.
std::vector<GainPoint> gain_points(const std::vector<ResultRow>& rows);

// Rows of every file (a missing file is an error here: the caller named it).
Result<std::vector<ResultRow>> load_results_files(const std::vector<std::filesystem::path>& files);

// The gains advice answers from: those of `files`, or of default_results_files() when none are named.
Result<std::vector<GainPoint>> study_gain_points(const std::vector<std::filesystem::path>& files);

// The model's size in billions of parameters (from its config.json): the scale along which the
// study's shapes are interpolated.
Result<double> model_params_b(const std::filesystem::path& model_dir);

struct ProbeOptions {
  std::filesystem::path model_dir;  // the model to measure
  std::string device = "cpu";       // cpu | cuda
  int context = 1024;
  std::string workload = "decode";
  int engines = 2;                  // compared with 1
  int repeats = 2;
  double warmup_s = 3, window_s = 8;
  std::filesystem::path out_dir;    // results.csv and logs of the probe (a study of one cell)
};

// A live A/B on this machine: a study of one model, one context, one workload, 1 vs N engines.
// Returns the rows it measured (also in out_dir/results.csv).
Result<std::vector<ResultRow>> run_probe(const ProbeOptions& o, FILE* log);

}  // namespace mpserve::study
