// `mpserve bench`: benchmarks. `bench offline` drives an in-process engine (no HTTP); `bench serve`
// is a load generator against any OpenAI-compatible endpoint.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "bench/offline_bench.h"
#include "bench/serve_bench.h"
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

struct ServeFlags {
  bench::ServeBenchOptions o;
  std::string json_path;
  bool no_progress = false;
};

int run_serve(const ServeFlags& f) {
  bench::ServeBenchOptions o = f.o;
  o.progress = !f.no_progress;
  auto r = bench::run_serve_bench(o, stderr);
  if (!r) {
    std::fprintf(stderr, "mpserve bench serve: %s\n", r.error().c_str());
    return 1;
  }
  bench::print_serve_bench(o, *r, stdout);
  if (!f.json_path.empty()) {
    std::ofstream out(f.json_path);
    out << bench::serve_bench_json(o, *r);
    if (!out.flush()) {
      std::fprintf(stderr, "mpserve bench serve: cannot write %s\n", f.json_path.c_str());
      return 1;
    }
  }
  // Failed requests are results, but a run that measured nothing at all is an error for scripts.
  if (r->completed == 0 && r->output_tokens == 0) {
    std::fprintf(stderr, "mpserve bench serve: no request completed (%lld failed)\n", static_cast<long long>(r->failed));
    return 1;
  }
  return 0;
}

// note: values are checked here (exit 2, like the other usage errors our commands report) rather
// than with CLI11 validators, whose failures exit with CLI11's own codes (100+).
int check_serve_flags(const ServeFlags& f, const CLI::App* cmd) {
  std::string err;
  if (auto st = bench::check_serve_bench_options(f.o); !st) err = st.message();
  if (err.empty() && f.o.duration_s > 0 && cmd->count("--num-requests") > 0) {
    err = "--num-requests cannot be combined with --duration (window mode runs until the window ends)";
  }
  if (err.empty() && !f.o.prompts_file.empty() && !std::filesystem::is_regular_file(f.o.prompts_file)) {
    err = "--prompts-file " + f.o.prompts_file + ": no such file";
  }
  if (err.empty()) return 0;
  std::fprintf(stderr, "mpserve bench serve: %s\nRun with --help for more information.\n", err.c_str());
  return 2;
}

void add_serve(CLI::App* bench) {
  auto f = std::make_shared<ServeFlags>();
  bench::ServeBenchOptions& o = f->o;
  CLI::App* cmd = bench->add_subcommand(
      "serve", "load generator against an OpenAI-compatible endpoint: streamed /v1/completions, TTFT/TPOT/ITL/E2E");
  cmd->add_option("--base-url", o.base_url, "server URL (http only); /v1/completions is appended")->capture_default_str();
  cmd->add_option("--model", o.model, "model name sent with each request (default: the first id of GET /v1/models)");
  cmd->add_option("--api-key", o.api_key, "sent as Authorization: Bearer");
  cmd->add_option("--input-len", o.input_len, "prompt length: random token ids, sent as a token-id array")
      ->capture_default_str();
  cmd->add_option("--output-len", o.output_len, "max_tokens (with ignore_eos: the output length)")->capture_default_str();
  cmd->add_option("--vocab-size", o.vocab_size, "random prompt ids are drawn from [0, N) (0: 128000)")
      ->capture_default_str();
  cmd->add_option("--prompts-file", o.prompts_file, "text prompts instead, one per line (or a JSON string per line)");
  cmd->add_option("--num-requests", o.num_requests, "requests to send (count mode)")->capture_default_str();
  cmd->add_option("--concurrency", o.concurrency, "closed loop: requests in flight; open loop: cap (0 = none)")
      ->capture_default_str();
  cmd->add_option("--request-rate", o.request_rate, "open loop: Poisson arrivals, requests/s (0 = closed loop)")
      ->capture_default_str();
  cmd->add_option("--duration", o.duration_s, "window mode: measure for this many seconds (after --warmup)")
      ->capture_default_str();
  cmd->add_option("--warmup", o.warmup_s, "window mode: seconds of load before the measured window")
      ->capture_default_str();
  cmd->add_option("--timeout", o.request_timeout_s, "per-request timeout in seconds")->capture_default_str();
  cmd->add_option("--seed", o.seed, "seed of the prompts and the arrival times")->capture_default_str();
  cmd->add_flag("--strict-output-len", o.strict_output_len, "count a completion shorter than --output-len as failed");
  cmd->add_option("--json", f->json_path, "also write options and results as JSON to this file");
  cmd->add_flag("--no-progress", f->no_progress, "no progress bar (it is drawn only when stderr is a terminal)");
  cmd->callback([f, cmd] {
    exit_code() = check_serve_flags(*f, cmd);
    if (exit_code() == 0) exit_code() = run_serve(*f);
  });
}

}  // namespace

void add_bench_command(CLI::App& app) {
  CLI::App* bench =
      app.add_subcommand("bench", "benchmarks (offline: in-process engine throughput; serve: load against an endpoint)");
  bench->require_subcommand(1);
  add_offline(bench);
  add_serve(bench);
}

}  // namespace mpserve::cli
