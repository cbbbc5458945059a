// `mpserve make-model`: a Hugging Face model directory with random weights.
#include <chrono>
#include <cstdio>
#include <string>

#include <fmt/format.h>

#include "cli/commands.h"
#include "model/model_writer.h"

namespace mpserve::cli {
namespace {

struct MakeModelFlags {
  std::string shape;
  std::string out;
  uint64_t seed = 0;
  std::string tokenizer_dir;
};

int run_make_model(const MakeModelFlags& f) {
  model::MakeModelOptions o;
  o.shape = f.shape;
  o.out_dir = f.out;
  o.seed = f.seed;
  if (!f.tokenizer_dir.empty()) {
    o.tokenizer_source_dir = f.tokenizer_dir;
  } else {
    auto src = model::find_tokenizer_source_dir();
    if (!src) {
      std::fprintf(stderr, "mpserve make-model: %s\n", src.error().c_str());
      return 1;
    }
    o.tokenizer_source_dir = *src;
  }
  auto t0 = std::chrono::steady_clock::now();
  Status st = model::make_model(o);
  if (!st.is_ok()) {
    std::fprintf(stderr, "mpserve make-model: %s\n", st.message().c_str());
    return 1;
  }
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  auto cfg = model::shape_config(f.shape);
  std::printf("make-model: shape=%s out=%s seed=%llu parameters=%lld elapsed_s=%.1f\n", f.shape.c_str(),
              f.out.c_str(), static_cast<unsigned long long>(f.seed),
              static_cast<long long>(cfg ? cfg->num_parameters() : 0), secs);
  return 0;
}

}  // namespace

void add_make_model_command(CLI::App& app) {
  auto f = std::make_shared<MakeModelFlags>();
  std::string shapes;
  for (const auto& s : model::known_shapes()) shapes += (shapes.empty() ? "" : ", ") + s;
  CLI::App* cmd = app.add_subcommand("make-model", "write a model directory with random weights of a known shape");
  cmd->add_option("--shape", f->shape,
                  "one of: " + shapes +
                      ". tiny (the embedded default) plants a next-token map, so greedy picks have wide margins "
                      "and GPU and CPU agree; tiny-plain has tiny's dimensions and plain random weights, so its "
                      "greedy tokens depend on the whole context (for tests comparing attention/KV-cache paths)")
      ->required()
      ->check(CLI::IsMember(model::known_shapes()));
  cmd->add_option("--out", f->out, "output directory (created)")->required();
  cmd->add_option("--seed", f->seed, "random seed")->capture_default_str();
  cmd->add_option("--tokenizer-dir", f->tokenizer_dir,
                  "directory with the source tokenizer.json/tokenizer_config.json (default: installed copy)");
  cmd->callback([f] { exit_code() = run_make_model(*f); });
}

}  // namespace mpserve::cli
