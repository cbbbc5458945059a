// `mpserve study`: flags only; the study lives in study/ (runner.h says how it runs).
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>

#include "cli/commands.h"
#include "study/machine.h"
#include "study/runner.h"

namespace mpserve::cli {
namespace {

constexpr const char* kFooter = R"(
How it measures: one `mpserve serve` per server configuration (shape x engines x MPS x ablation x
async x step CPU cost), started once; against it, one closed-loop window per (context x workload x
repeat): --warmup seconds, then --window seconds in which arriving tokens are counted. decode =
prompt of CONTEXT tokens, --decode-output-len tokens out, throughput in output tok/s; prefill =
1 token out, throughput in prompt tok/s. 1 and N engines get the same concurrency and requests
(the router balances); the 1-engine baseline runs once per shape/ablation, MPS off.
Gain = throughput(N) / throughput(1) - 1. Ablations name what remains: attention = MLP removed
(engine --ablate mlp), mlp = attention removed (--ablate attention).

Resuming: a cell (all its parameters + repeat + GPU name) already in OUT/results.csv is skipped;
a configuration with nothing left is not started. Every window is appended as soon as measured.

Defaults (CUDA): shapes qwen2.5-0.5b,1.5b,3b,7b; contexts 128..8192 (powers of 2); workloads
decode,prefill; engines 1,2; mps on,off; ablations full,attention,mlp; repeats 3; warmup 5 s;
window 15 s; concurrency decode=64,prefill=16 (capped so the largest engine count's KV caches
hold every sequence); decode output 256 tokens.
--quick (CUDA): qwen2.5-0.5b, contexts 128,2048, mps on, full, 1 repeat, warmup 3 s, window 5 s,
decode output 128 tokens.
CPU (--device cpu, also with --quick): tiny, contexts 32,128, mps off, full, concurrency decode=8,
prefill=4, decode output 16, warmup 1 s, window 2 s (--quick) or 3 s; a CPU run says nothing
about MPS. --cpu-overhead adds: --cpu-overhead-shape (default qwen2.5-3b; CPU: tiny) decode at
--cpu-overhead-context (512; CPU: 32) with --step-cpu-us (3000; CPU: 2000): 1 engine, 1 engine
with --async-scheduling, 2 engines under MPS.

Output in OUT: results.csv, report.md, plots/*.png (+ .dat, .gp; gnuplot), commands.txt,
logs/<configuration>.serve.log and logs/<configuration>/ (engine and MPS logs), logs/problems.txt.
Exit: 0 done, 1 a configuration or window failed, 2 bad flags, 130 interrupted.)";

std::string command_line() {
  std::ifstream in("/proc/self/cmdline", std::ios::binary);
  std::string raw(std::istreambuf_iterator<char>(in), {});
  std::string out;
  size_t start = 0;
  for (size_t i = 0; i <= raw.size(); ++i) {
    if (i < raw.size() && raw[i] != '\0') continue;
    if (i == start && i == raw.size()) break;
    std::string arg = raw.substr(start, i - start);
    if (!out.empty()) out += ' ';
    out += arg.find_first_of(" \t'\"$") == std::string::npos && !arg.empty() ? arg : "'" + arg + "'";
    start = i + 1;
  }
  return out;
}

int run(const study::StudyFlags& f) {
  study::StudyFlags flags = f;
  flags.command_line = command_line();
  auto o = study::resolve_options(flags, study::gpu_present());
  if (!o) {
    std::fprintf(stderr, "mpserve study: %s\n", o.error().c_str());
    return 2;
  }
  return study::run_study(*o, stdout);
}

}  // namespace

void add_study_command(CLI::App& app) {
  auto f = std::make_shared<study::StudyFlags>();
  CLI::App* cmd = app.add_subcommand(
      "study", "the co-location study: sweep shape x context x workload x engines x MPS x ablation; CSV, report, plots");
  cmd->add_option("--out", f->out_dir, "output directory (results.csv, report.md, plots/, logs/); resumed when it exists");
  cmd->add_option("--shapes", f->shapes, "model shapes, comma-separated (tiny, qwen2.5-0.5b or 0.5b, 1.5b, 3b, 7b, llama3.2-1b)");
  cmd->add_option("--model", f->model_dir, "study this model directory instead of --shapes (e.g. a real checkpoint)");
  cmd->add_option("--contexts", f->contexts, "prompt lengths in tokens, comma-separated");
  cmd->add_option("--workloads", f->workloads, "decode, prefill (comma-separated)");
  cmd->add_option("--engines", f->engines, "engine counts, comma-separated (1, the baseline, is always included)");
  cmd->add_option("--mps", f->mps, "on, off or on,off: MPS for N > 1 engines");
  cmd->add_option("--ablations", f->ablations, "full, attention (MLP removed), mlp (attention removed)");
  cmd->add_option("--repeats", f->repeats, "windows per cell (median and min-max reported)");
  cmd->add_option("--warmup", f->warmup_s, "seconds of load before each window");
  cmd->add_option("--window", f->window_s, "measured seconds per window");
  cmd->add_option("--device", f->device, "auto | cpu | cuda (auto: cuda when a GPU is present)")->capture_default_str();
  cmd->add_option("--models-dir", f->models_dir,
                  "where the random-weight models are made and reused (default: <mpserve cache>/study-models)");
  cmd->add_flag("--quick", f->quick, "a small grid that runs in a few minutes (see below)");
  cmd->add_option("--concurrency", f->concurrency, "requests in flight: N for both, or decode=N,prefill=M");
  cmd->add_option("--decode-output-len", f->decode_output_len, "tokens generated per decode request");
  cmd->add_option("--max-num-batched-tokens", f->max_num_batched_tokens, "engine token budget per step");
  cmd->add_flag("--cpu-overhead", f->cpu_overhead,
                "also run the CPU-overhead experiment (1 engine, 1 engine + async scheduling, 2 engines under MPS)");
  cmd->add_option("--cpu-overhead-shape", f->cpu_overhead_shape, "shape of the CPU-overhead experiment");
  cmd->add_option("--cpu-overhead-context", f->cpu_overhead_context, "context of the CPU-overhead experiment");
  cmd->add_option("--step-cpu-us", f->step_cpu_us, "host time injected per engine step in the CPU-overhead experiment");
  cmd->add_option("--ready-timeout", f->ready_timeout_s, "seconds an engine may take to load and answer /health")
      ->check(CLI::Range(1.0, 3600.0))
      ->capture_default_str();
  cmd->add_option("--commit", f->commit, "commit recorded in results.csv (default: git rev-parse in the working dir)");
  cmd->add_flag("--report-only", f->report_only, "only redraw report.md and plots from OUT/results.csv");
  cmd->add_flag("--dry-run", f->dry_run, "print the plan (configurations, cells, estimated time) and exit");
  cmd->footer(kFooter);
  cmd->callback([f] { exit_code() = run(*f); });
}

}  // namespace mpserve::cli
