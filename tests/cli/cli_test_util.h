// Runs the real mpserve binary (path from $MPSERVE_BIN, set by CTest) and captures its output.
#pragma once

#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include <gtest/gtest.h>

#include "model/model_writer.h"

namespace mpserve::testing {

struct CommandResult {
  int exit_code = -1;
  std::string out;  // stdout
  std::string err;  // stderr
};

inline std::string mpserve_bin() {
  const char* b = std::getenv("MPSERVE_BIN");
  return b ? b : "mpserve";
}

inline std::string read_all(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Runs `sh -c "<bin> <args> < stdin_file"`; stdout and stderr go to temp files.
inline CommandResult run_mpserve(const std::string& args, const std::string& stdin_text = "") {
  static int counter = 0;
  auto tmp = std::filesystem::temp_directory_path() /
             ("mpserve-cli-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
  std::filesystem::create_directories(tmp);
  {
    std::ofstream in(tmp / "stdin");
    in << stdin_text;
  }
  std::string cmd = mpserve_bin() + " " + args + " <" + (tmp / "stdin").string() + " >" + (tmp / "stdout").string() +
                    " 2>" + (tmp / "stderr").string();
  int rc = std::system(cmd.c_str());
  CommandResult r;
  r.exit_code = WIFEXITED(rc) ? WEXITSTATUS(rc) : 128 + WTERMSIG(rc);
  r.out = read_all(tmp / "stdout");
  r.err = read_all(tmp / "stderr");
  std::filesystem::remove_all(tmp);
  return r;
}

// `--model <dir>` of make-model's tiny-plain (seed 0), made once in the test cache
// ($MPSERVE_CACHE_DIR) and shared by every test process. For tests that compare two attention /
// KV-cache paths by exact greedy tokens: the embedded tiny's greedy token is mostly the planted
// successor of the last token (model_writer.h), so a broken path would still match there.
inline std::string tiny_plain_model_arg() {
  auto dir = model::ensure_cached_model("tiny-plain", 0);
  EXPECT_TRUE(dir.is_ok()) << dir.error();
  return dir.is_ok() ? " --model " + dir->string() : "";
}

}  // namespace mpserve::testing
