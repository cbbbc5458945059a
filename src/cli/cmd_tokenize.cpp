// `mpserve tokenize`: one JSON array of ids per input line, or the reverse with --decode.
#include <cstdio>
#include <iostream>
#include <string>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/engine_flags.h"

namespace mpserve::cli {
namespace {

struct TokenizeFlags {
  std::string model_dir;
  bool decode = false;
  bool skip_special = false;
};

int run_tokenize(const TokenizeFlags& f) {
  auto dir = resolve_model_dir(f.model_dir);
  if (!dir) {
    std::fprintf(stderr, "mpserve tokenize: %s\n", dir.error().c_str());
    return 1;
  }
  auto tok = tokenizer::Tokenizer::load(*dir);
  if (!tok) {
    std::fprintf(stderr, "mpserve tokenize: %s\n", tok.error().c_str());
    return 1;
  }
  std::string line;
  int64_t line_no = 0;
  while (std::getline(std::cin, line)) {
    ++line_no;
    if (!f.decode) {
      nlohmann::json ids = (*tok)->encode(line);
      std::printf("%s\n", ids.dump().c_str());
      continue;
    }
    nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    std::vector<int32_t> ids;
    bool ok = j.is_array();
    for (const auto& v : j) {
      if (!ok) break;
      ok = v.is_number_integer() && v.get<int64_t>() >= 0 && v.get<int64_t>() < (*tok)->vocab_size();
      if (ok) ids.push_back(v.get<int32_t>());
    }
    if (!ok) {
      std::fprintf(stderr, "mpserve tokenize: line %lld: expected a JSON array of token ids in [0, %d)\n",
                   static_cast<long long>(line_no), (*tok)->vocab_size());
      return 2;
    }
    std::string text = (*tok)->decode(ids, f.skip_special);
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fputc('\n', stdout);
  }
  return 0;
}

}  // namespace

void add_tokenize_command(CLI::App& app) {
  auto f = std::make_shared<TokenizeFlags>();
  CLI::App* cmd = app.add_subcommand("tokenize", "encode stdin lines to JSON id arrays (or --decode them back)");
  cmd->add_option("--model", f->model_dir, "model directory (default: the embedded tiny model)");
  cmd->add_flag("--decode", f->decode, "read JSON id arrays, print text");
  cmd->add_flag("--skip-special-tokens", f->skip_special, "with --decode: drop special tokens");
  cmd->callback([f] { exit_code() = run_tokenize(*f); });
}

}  // namespace mpserve::cli
