// `mpserve advise`: co-locate this model on this GPU or not, and with how many engines (study/).
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "cli/commands.h"
#include "cli/engine_flags.h"
#include "study/advise.h"
#include "study/advisor.h"
#include "study/machine.h"

namespace mpserve::cli {
namespace {
namespace fs = std::filesystem;

struct AdviseFlags {
  std::string model;
  double params_b = 0;
  int context = 0;
  std::string workload = "decode";
  std::vector<std::string> results;
  std::string gpu;
  std::string device = "auto";
  double min_gain = 0.10;
  bool json = false;
  bool probe = false;
  bool probe_if_needed = false;
  int probe_engines = 2;
  int probe_repeats = 2;
  double probe_warmup_s = 3;
  double probe_window_s = 8;
  std::string probe_out;
};

int fail(const std::string& message, int code = 1) {
  std::fprintf(stderr, "mpserve advise: %s\n", message.c_str());
  return code;
}

int run_advise(const AdviseFlags& f) {
  // The model: its size is what the study's shapes are interpolated by.
  auto model_dir = resolve_model_dir(f.model);
  if (!model_dir) return fail(model_dir.error());
  double params_b = f.params_b;
  if (params_b <= 0) {
    auto p = study::model_params_b(*model_dir);
    if (!p) return fail(p.error(), 2);
    params_b = *p;
  }
  const std::string device = f.device == "auto" ? (study::gpu_present() ? "cuda" : "cpu") : f.device;
  const study::MachineInfo machine = study::detect_machine(device, "");

  study::AdviceQuery q;
  q.gpu = !f.gpu.empty() ? f.gpu : machine.gpu;
  q.params_b = params_b;
  q.context = f.context;
  q.workload = f.workload;
  q.min_gain = f.min_gain;

  Result<study::Advice> advice = Status::error("no answer");
  if (!f.probe) {
    const std::vector<fs::path> files(f.results.begin(), f.results.end());
    auto gains = study::study_gain_points(files);
    if (!gains) return fail(gains.error());
    advice = study::advise_from_study(*gains, q);
    if (!advice && !f.probe_if_needed) return fail(advice.error());
    if (!advice) std::fprintf(stderr, "mpserve advise: %s\nmpserve advise: measuring it instead (--probe)\n",
                              advice.error().c_str());
  }
  if (f.probe || !advice) {
    study::ProbeOptions p;
    p.model_dir = *model_dir;
    p.device = device;
    p.context = f.context;
    p.workload = f.workload;
    p.engines = f.probe_engines;
    p.repeats = f.probe_repeats;
    p.warmup_s = f.probe_warmup_s;
    p.window_s = f.probe_window_s;
    const bool keep = !f.probe_out.empty();
    p.out_dir = keep ? fs::path(f.probe_out)
                     : fs::temp_directory_path() / fmt::format("mpserve-advise-probe-{}", getpid());
    auto rows = study::run_probe(p, stderr);
    if (!keep) {
      std::error_code ec;
      fs::remove_all(p.out_dir, ec);
    }
    if (!rows) return fail(rows.error());
    // The probe measured this very model on this machine: its rows carry the study's names for
    // it, so the query is matched to them exactly.
    study::AdviceQuery pq = q;
    pq.gpu = machine.gpu;
    if (!rows->empty()) pq.params_b = rows->front().params_b;
    advice = study::advise_from_study(study::gain_points(*rows), pq);
    if (!advice) return fail(advice.error());
    advice->basis = "probe";
  }
  if (f.json) {
    std::printf("%s\n", study::advice_json(*advice, q).c_str());
  } else {
    std::printf("%s", study::format_advice(*advice, q).c_str());
  }
  return 0;
}

}  // namespace

void add_advise_command(CLI::App& app) {
  auto f = std::make_shared<AdviseFlags>();
  CLI::App* cmd = app.add_subcommand(
      "advise", "co-locate or not: how many engines, and the expected gain, for a model, context and workload");
  cmd->footer(
      "Answers from `mpserve study` results for this GPU type (interpolated in log context and log model size):\n"
      "--results files, else $MPSERVE_STUDY_RESULTS, else the results shipped with mpserve. With --probe it\n"
      "measures instead: a short live A/B of 1 vs N engines on this machine.");
  cmd->add_option("--model", f->model, "model directory (default: the embedded tiny model); its size is what counts");
  cmd->add_option("--params-b", f->params_b, "model size in billions of parameters (instead of reading --model)")
      ->check(CLI::Range(1e-6, 1e4));
  cmd->add_option("--context", f->context, "prompt length in tokens")->required()->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--workload", f->workload, "decode (long outputs) | prefill (1-token outputs)")
      ->check(CLI::IsMember({"decode", "prefill"}))
      ->capture_default_str();
  cmd->add_option("--results", f->results, "study results.csv files (repeatable)")->check(CLI::ExistingFile);
  cmd->add_option("--gpu", f->gpu, "GPU name to look up (default: this machine's, as nvidia-smi names it)");
  cmd->add_option("--device", f->device, "auto | cpu | cuda: whose results to use, and what --probe runs on")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}))
      ->capture_default_str();
  cmd->add_option("--min-gain", f->min_gain, "the smallest gain worth co-locating for (lower bound of the range)")
      ->check(CLI::Range(0.0, 10.0))
      ->capture_default_str();
  cmd->add_flag("--json", f->json, "print the advice as JSON");
  cmd->add_flag("--probe", f->probe, "measure: a live A/B of 1 vs --probe-engines engines on this machine");
  cmd->add_flag("--probe-if-needed", f->probe_if_needed, "probe when the study has nothing for this GPU");
  cmd->add_option("--probe-engines", f->probe_engines, "engines to compare with one")
      ->check(CLI::Range(2, 16))
      ->capture_default_str();
  cmd->add_option("--probe-repeats", f->probe_repeats, "windows per engine count")
      ->check(CLI::Range(1, 20))
      ->capture_default_str();
  cmd->add_option("--probe-warmup", f->probe_warmup_s, "seconds of load before each window")
      ->check(CLI::Range(0.0, 600.0))
      ->capture_default_str();
  cmd->add_option("--probe-window", f->probe_window_s, "seconds measured per window")
      ->check(CLI::Range(0.5, 3600.0))
      ->capture_default_str();
  cmd->add_option("--probe-out", f->probe_out, "keep the probe's results.csv and logs here (default: a temp dir)");
  cmd->callback([f] { exit_code() = run_advise(*f); });
}

}  // namespace mpserve::cli
