// mpserve: one binary, one subcommand per job (DESIGN.md).
#include <cstdio>

#include <CLI/CLI.hpp>

#include "cli/commands.h"

namespace mpserve::cli {
int& exit_code() {
  static int code = 0;
  return code;
}
}  // namespace mpserve::cli

int main(int argc, char** argv) {
  CLI::App app{"mpserve: co-located small-LLM inference engines on one GPU through NVIDIA MPS"};
  app.require_subcommand(1);
  mpserve::cli::add_generate_command(app);
  mpserve::cli::add_tokenize_command(app);
  mpserve::cli::add_make_model_command(app);
  mpserve::cli::add_serve_command(app);
  mpserve::cli::add_router_command(app);
  mpserve::cli::add_bench_command(app);
  mpserve::cli::add_engine_command(app);
  mpserve::cli::add_study_command(app);
  mpserve::cli::add_advise_command(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help and --version print and succeed; every usage error (unknown flag, bad or
    // out-of-range value, missing required option) exits 2 like the subcommands' own checks.
    return app.exit(e) == 0 ? 0 : 2;
  }
  return mpserve::cli::exit_code();
}
