// One registration function per subcommand (cli/ parses flags only; logic lives in modules).
#pragma once

#include <CLI/CLI.hpp>

namespace mpserve::cli {

void add_generate_command(CLI::App& app);
void add_tokenize_command(CLI::App& app);
void add_make_model_command(CLI::App& app);
void add_serve_command(CLI::App& app);
void add_router_command(CLI::App& app);
void add_bench_command(CLI::App& app);
void add_engine_command(CLI::App& app);
void add_study_command(CLI::App& app);
void add_advise_command(CLI::App& app);

// Set by a subcommand's callback; main returns it.
int& exit_code();

}  // namespace mpserve::cli
