// `mpserve bench`: benchmarks. `bench offline` drives an in-process engine (no HTTP); further
// modes (e.g. `bench serve`, against an OpenAI-compatible endpoint) add a sub-subcommand here.
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "bench/offline_bench.h"
#include "cli/commands.h"
#include "cli/engine_flags.h"

namespace mpserve::cli {
namespace {

struct OfflineFlags {
  EngineFlags engine;
  std::vector<int> batches = {1};
  std::vector<int> input_lens = {128};
  int output_len = 64;
  int repeats = 3;
  int warmup = 1;
  uint64_t seed = 0;
  bool profile = false;
};

int run_offline(const OfflineFlags& f) {
  auto loaded = load_engine(f.engine);
  if (!loaded) {
    std::fprintf(stderr, "mpserve bench offline: %s\n", loaded.error().c_str());
    return 1;
  }
  bench::OfflineBenchOptions o;
  o.batches = f.batches;
  o.input_lens = f.input_lens;
  o.output_len = f.output_len;
  o.repeats = f.repeats;
  o.warmup = f.warmup;
  o.seed = f.seed;
  o.profile = f.profile;
  o.model_label = loaded->model_dir.filename().string();
  auto r = bench::run_offline_bench(*loaded->engine, loaded->tokenizer->vocab_size(), o, stdout);
  if (!r) {
    std::fprintf(stderr, "mpserve bench offline: %s\n", r.error().c_str());
    return 1;
  }
  return 0;
}

void add_offline(CLI::App* bench) {
  auto f = std::make_shared<OfflineFlags>();
  CLI::App* cmd = bench->add_subcommand(
      "offline", "throughput of an in-process engine: B random prompts of L tokens, O generated tokens each");
  add_engine_flags(cmd, &f->engine);
  cmd->add_option("--batch", f->batches, "batch sizes (comma-separated: one configuration each)")
      ->delimiter(',')
      ->check(CLI::Range(1, 1 << 16))
      ->capture_default_str();
  cmd->add_option("--input-len", f->input_lens, "prompt lengths in tokens (comma-separated)")
      ->delimiter(',')
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  cmd->add_option("--output-len", f->output_len, "generated tokens per request (ignore_eos)")
      ->check(CLI::Range(2, 1 << 20))
      ->capture_default_str();
  cmd->add_option("--repeats", f->repeats, "timed runs per configuration")->check(CLI::Range(1, 1000))->capture_default_str();
  cmd->add_option("--warmup", f->warmup, "untimed runs per configuration (16-token prompts)")
      ->check(CLI::Range(0, 100))
      ->capture_default_str();
  cmd->add_option("--seed", f->seed, "prompt seed")->capture_default_str();
  cmd->add_flag("--profile", f->profile, "one extra eager run per configuration with per-kernel device times");
  cmd->callback([f] { exit_code() = run_offline(*f); });
}

}  // namespace

void add_bench_command(CLI::App& app) {
  CLI::App* bench = app.add_subcommand("bench", "benchmarks (offline: in-process engine throughput)");
  bench->require_subcommand(1);
  add_offline(bench);
}

}  // namespace mpserve::cli
