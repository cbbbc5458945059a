// How one engine process is started: its command line (from the default `mpserve engine` command or
// an --engine-cmd template) and the per-client environment (MPS directories and limits).
#pragma once

#include <filesystem>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "common/status.h"

namespace mpserve::supervisor {

struct EngineLaunch {
  int index = 0;         // across all GPUs
  int gpu = 0;           // physical GPU index
  int port = 0;
  std::vector<std::string> argv;
  std::vector<std::pair<std::string, std::string>> env_set;
  std::vector<std::string> env_unset;
  std::filesystem::path log_file;
};

// Replaces every {name} of `values` in `text`; an unknown {placeholder} is an error (a typo would
// otherwise reach the engine's command line).
Result<std::string> expand_template(const std::string& text, const std::map<std::string, std::string>& values);

// Splits a command line at whitespace, honouring '…' and "…" quoting (no other shell syntax).
Result<std::vector<std::string>> split_command(const std::string& line);

// Parses a size such as 20G, 512M, 1.5G (units K, M, G, T; optional B/iB) into MPS's notation (e.g. "20G").
Result<std::string> parse_mem_limit(const std::string& text);

// A free TCP port on 127.0.0.1 at the time of the call.
Result<int> pick_free_port();

}  // namespace mpserve::supervisor
