// `mpserve generate`: offline generation through the engine (no HTTP).
#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/engine_flags.h"

namespace mpserve::cli {
namespace {

struct GenerateFlags {
  EngineFlags engine;
  std::vector<std::string> prompts;
  std::string prompts_file;
  int max_tokens = 64;
  float temperature = 0.0f;
  float top_p = 1.0f;
  int top_k = 0;
  uint64_t seed = 0;
  bool chat = false;
  bool ignore_eos = false;
  bool one_at_a_time = false;
  bool json = false;
};

Result<std::vector<std::string>> read_prompts(const GenerateFlags& g) {
  std::vector<std::string> prompts = g.prompts;
  if (!g.prompts_file.empty()) {
    std::ifstream in(g.prompts_file);
    if (!in) return Status::errorf("cannot open --prompts-file {}", g.prompts_file);
    std::string line;
    while (std::getline(in, line)) {
      if (!line.empty()) prompts.push_back(line);
    }
    if (prompts.empty()) return Status::errorf("--prompts-file {} has no non-empty line", g.prompts_file);
  }
  if (prompts.empty()) prompts.push_back("The quick brown fox");
  return prompts;
}

struct Completion {
  std::vector<int32_t> prompt_ids;
  std::vector<int32_t> ids;
  std::string text;
  std::string finish_reason;
};

// Runs requests [begin, end) together until all finish; fills completions by index.
Status run_batch(engine::Engine& eng, const std::vector<engine::GenerationRequest>& reqs, size_t begin, size_t end,
                 std::vector<Completion>* out) {
  std::unordered_map<uint64_t, size_t> index;
  for (size_t i = begin; i < end; ++i) {
    MPS_ASSIGN_OR_RETURN(uint64_t id, eng.add_request(reqs[i]));
    index[id] = i;
  }
  while (eng.has_unfinished()) {
    for (auto& o : eng.step()) {
      Completion& c = (*out)[index.at(o.request_id)];
      c.ids.insert(c.ids.end(), o.new_tokens.begin(), o.new_tokens.end());
      c.text += o.new_text;
      if (o.finished) c.finish_reason = engine::finish_reason_name(o.finish_reason);
    }
  }
  return Status::ok();
}

int run_generate(const GenerateFlags& g) {
  auto prompts = read_prompts(g);
  if (!prompts) {
    std::fprintf(stderr, "mpserve generate: %s\n", prompts.error().c_str());
    return 2;
  }
  auto loaded = load_engine(g.engine);
  if (!loaded) {
    std::fprintf(stderr, "mpserve generate: %s\n", loaded.error().c_str());
    return 1;
  }
  LoadedEngine& le = *loaded;

  std::vector<engine::GenerationRequest> reqs;
  std::vector<Completion> completions(prompts->size());
  for (size_t i = 0; i < prompts->size(); ++i) {
    std::string text = (*prompts)[i];
    if (g.chat) {
      auto rendered = tokenizer::apply_chat_template(le.tokenizer->chat_template_kind(), {{"user", text}}, true);
      if (!rendered) {
        std::fprintf(stderr, "mpserve generate: %s\n", rendered.error().c_str());
        return 1;
      }
      text = *rendered;
    }
    engine::GenerationRequest r;
    r.prompt = le.tokenizer->encode(text);
    r.max_tokens = g.max_tokens;
    r.sampling.temperature = g.temperature;
    r.sampling.top_p = g.top_p;
    r.sampling.top_k = g.top_k;
    r.sampling.seed = g.seed + i;
    r.ignore_eos = g.ignore_eos;
    completions[i].prompt_ids = r.prompt;
    reqs.push_back(std::move(r));
  }

  auto t0 = std::chrono::steady_clock::now();
  Status st = Status::ok();
  if (g.one_at_a_time) {
    for (size_t i = 0; i < reqs.size() && st.is_ok(); ++i) st = run_batch(*le.engine, reqs, i, i + 1, &completions);
  } else {
    st = run_batch(*le.engine, reqs, 0, reqs.size(), &completions);
  }
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!st.is_ok()) {
    std::fprintf(stderr, "mpserve generate: %s\n", st.message().c_str());
    return 1;
  }

  int64_t prompt_tokens = 0, gen_tokens = 0;
  for (size_t i = 0; i < completions.size(); ++i) {
    const Completion& c = completions[i];
    prompt_tokens += static_cast<int64_t>(c.prompt_ids.size());
    gen_tokens += static_cast<int64_t>(c.ids.size());
    if (g.json) {
      nlohmann::json j = {{"index", i},           {"prompt", (*prompts)[i]}, {"prompt_token_ids", c.prompt_ids},
                          {"token_ids", c.ids},   {"text", c.text},          {"finish_reason", c.finish_reason}};
      std::printf("%s\n", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    } else {
      std::printf("=== [%zu] %s\n%s\n--- finish_reason=%s tokens=%zu\n", i, (*prompts)[i].c_str(), c.text.c_str(),
                  c.finish_reason.c_str(), c.ids.size());
    }
  }
  auto stats = le.engine->stats();
  std::printf(
      "generate: device=%s requests=%zu prompt_tokens=%lld generated_tokens=%lld elapsed_s=%.3f "
      "tokens_per_s=%.1f steps=%lld preemptions=%lld\n",
      std::string(le.engine->backend().name()).c_str(), completions.size(), static_cast<long long>(prompt_tokens),
      static_cast<long long>(gen_tokens), secs, secs > 0 ? static_cast<double>(gen_tokens) / secs : 0.0,
      static_cast<long long>(stats.steps), static_cast<long long>(stats.num_preemptions));
  return 0;
}

}  // namespace

void add_generate_command(CLI::App& app) {
  auto g = std::make_shared<GenerateFlags>();
  CLI::App* cmd = app.add_subcommand("generate", "offline generation: load a model, run prompts, print completions");
  add_engine_flags(cmd, &g->engine);
  cmd->add_option("--prompt", g->prompts, "prompt text (repeatable)");
  cmd->add_option("--prompts-file", g->prompts_file, "file with one prompt per line");
  cmd->add_option("--max-tokens", g->max_tokens, "tokens to generate per prompt")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  cmd->add_option("--temperature", g->temperature, "0 = greedy")->check(CLI::Range(0.0, 100.0))->capture_default_str();
  cmd->add_option("--top-p", g->top_p, "nucleus sampling mass")->check(CLI::Range(0.000001, 1.0));
  cmd->add_option("--top-k", g->top_k, "0 = off")->check(CLI::Range(0, 1 << 20));
  cmd->add_option("--seed", g->seed, "sampling seed (prompt i uses seed + i)");
  cmd->add_flag("--chat", g->chat, "wrap each prompt as a user message in the model's chat template");
  cmd->add_flag("--ignore-eos", g->ignore_eos, "keep generating past end-of-sequence tokens");
  cmd->add_flag("--one-at-a-time", g->one_at_a_time, "run prompts sequentially instead of batched together");
  cmd->add_flag("--json", g->json, "print one JSON object per completion (ids and text)");
  cmd->callback([g] { exit_code() = run_generate(*g); });
}

}  // namespace mpserve::cli
