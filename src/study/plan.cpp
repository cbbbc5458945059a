#include "study/plan.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <map>
#include <sstream>

#include <fmt/format.h>

#include "common/env.h"
#include "model/model_writer.h"

namespace mpserve::study {
namespace {

std::vector<std::string> split(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    size_t b = item.find_first_not_of(' ');
    size_t e = item.find_last_not_of(' ');
    if (b != std::string::npos) out.push_back(item.substr(b, e - b + 1));
  }
  return out;
}

Result<std::vector<int>> parse_ints(const std::string& text, const char* flag, int min_value) {
  std::vector<int> out;
  for (const std::string& item : split(text)) {
    try {
      size_t used = 0;
      int v = std::stoi(item, &used);
      if (used != item.size()) throw std::invalid_argument(item);
      if (v < min_value) return Status::errorf("{}: {} is below the minimum {}", flag, v, min_value);
      out.push_back(v);
    } catch (const std::exception&) {
      return Status::errorf("{}: '{}' is not an integer", flag, item);
    }
  }
  if (out.empty()) return Status::errorf("{}: empty list", flag);
  return out;
}

Result<std::vector<std::string>> parse_members(const std::string& text, const char* flag,
                                               const std::vector<std::string>& allowed) {
  std::vector<std::string> out;
  for (const std::string& item : split(text)) {
    if (std::find(allowed.begin(), allowed.end(), item) == allowed.end()) {
      return Status::errorf("{}: unknown value '{}' (one of: {})", flag, item, fmt::join(allowed, ", "));
    }
    if (std::find(out.begin(), out.end(), item) == out.end()) out.push_back(item);
  }
  if (out.empty()) return Status::errorf("{}: empty list", flag);
  return out;
}

// "0.5b" -> "qwen2.5-0.5b": the shorthand for the Qwen2.5 shapes.
std::string full_shape_name(const std::string& s) {
  if (s.size() > 1 && s.back() == 'b' && (std::isdigit(static_cast<unsigned char>(s[0])) != 0)) return "qwen2.5-" + s;
  return s;
}

int round_up(int v, int m) { return (v + m - 1) / m * m; }

}  // namespace

Result<model::ModelConfig> study_shape_config(const StudyOptions& o, const std::string& shape) {
  if (!o.model_dir.empty() && shape == o.model_label) return model::load_model_config(o.model_dir);
  return model::shape_config(shape);
}

double shape_params_b(const StudyOptions& o, const std::string& shape) {
  auto cfg = study_shape_config(o, shape);
  return cfg ? static_cast<double>(cfg->num_parameters()) / 1e9 : 0;
}

Result<StudyOptions> resolve_options(const StudyFlags& f, bool device_auto_is_cuda) {
  StudyOptions o;
  if (f.device != "auto" && f.device != "cpu" && f.device != "cuda") {
    return Status::errorf("--device: '{}' is not auto, cpu or cuda", f.device);
  }
  o.device = f.device == "auto" ? (device_auto_is_cuda ? "cuda" : "cpu") : f.device;
  const bool cpu = o.device == "cpu";
  o.quick = f.quick;
  o.report_only = f.report_only;
  o.dry_run = f.dry_run;
  o.command_line = f.command_line;
  o.commit = f.commit;
  o.ready_timeout_s = f.ready_timeout_s;
  if (f.out_dir.empty()) return Status::error("--out: required");
  o.out_dir = f.out_dir;

  // Defaults: the whole grid on CUDA; on CPU (tests, `make demo`) the tiny model and short contexts.
  std::string shapes = cpu ? "tiny" : (f.quick ? "qwen2.5-0.5b" : "qwen2.5-0.5b,qwen2.5-1.5b,qwen2.5-3b,qwen2.5-7b");
  std::string contexts = cpu ? "32,128" : (f.quick ? "128,2048" : "128,256,512,1024,2048,4096,8192");
  std::string ablations = f.quick || cpu ? "full" : "full,attention,mlp";
  std::string mps = cpu ? "off" : (f.quick ? "on" : "on,off");
  o.repeats = f.quick ? 1 : 3;
  o.warmup_s = cpu ? 1 : (f.quick ? 3 : 5);
  o.window_s = cpu ? (f.quick ? 2 : 3) : (f.quick ? 5 : 15);
  o.decode_concurrency = cpu ? 8 : 64;
  o.prefill_concurrency = cpu ? 4 : 16;
  o.decode_output_len = cpu ? 16 : (f.quick ? 128 : 256);
  o.max_num_batched_tokens = cpu ? 2048 : 8192;

  if (!f.model_dir.empty()) {
    // A real (or any) model directory instead of the make-model shapes: it is named in
    // results.csv by its directory name.
    if (!f.shapes.empty()) return Status::error("--model and --shapes: give one of them");
    o.model_dir = std::filesystem::absolute(f.model_dir);
    auto cfg = model::load_model_config(o.model_dir);
    if (!cfg) return Status::errorf("--model: {}", cfg.error());
    std::string name = o.model_dir.filename().string();
    if (name.empty()) name = o.model_dir.parent_path().filename().string();
    for (char& c : name) {
      if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '-' && c != '_') c = '_';
    }
    o.model_label = "model-" + name;
    o.shapes = {o.model_label};
  } else {
    std::vector<std::string> raw_shapes;
    for (const std::string& s : split(f.shapes.empty() ? shapes : f.shapes)) raw_shapes.push_back(full_shape_name(s));
    MPS_ASSIGN_OR_RETURN(o.shapes, parse_members(fmt::format("{}", fmt::join(raw_shapes, ",")), "--shapes",
                                                 model::known_shapes()));
  }
  MPS_ASSIGN_OR_RETURN(o.contexts, parse_ints(f.contexts.empty() ? contexts : f.contexts, "--contexts", 1));
  MPS_ASSIGN_OR_RETURN(o.workloads, parse_members(f.workloads.empty() ? "decode,prefill" : f.workloads,
                                                  "--workloads", {"decode", "prefill"}));
  MPS_ASSIGN_OR_RETURN(o.engines, parse_ints(f.engines.empty() ? "1,2" : f.engines, "--engines", 1));
  o.engines.push_back(1);
  std::sort(o.engines.begin(), o.engines.end());
  o.engines.erase(std::unique(o.engines.begin(), o.engines.end()), o.engines.end());
  if (o.engines.back() > 48) return Status::errorf("--engines: {} is above 48", o.engines.back());
  MPS_ASSIGN_OR_RETURN(o.mps, parse_members(f.mps.empty() ? mps : f.mps, "--mps", {"on", "off"}));
  if (cpu && std::find(o.mps.begin(), o.mps.end(), "on") != o.mps.end()) {
    return Status::error("--mps on needs --device cuda (MPS shares a GPU; CPU engines have none)");
  }
  MPS_ASSIGN_OR_RETURN(o.ablations, parse_members(f.ablations.empty() ? ablations : f.ablations, "--ablations",
                                                  {"full", "attention", "mlp"}));
  if (f.repeats >= 0) o.repeats = f.repeats;
  if (o.repeats < 1 || o.repeats > 100) return Status::errorf("--repeats: {} is outside 1..100", o.repeats);
  if (f.warmup_s >= 0) o.warmup_s = f.warmup_s;
  if (f.window_s >= 0) o.window_s = f.window_s;
  if (o.window_s <= 0) return Status::error("--window: must be > 0 seconds");
  if (f.decode_output_len >= 0) o.decode_output_len = f.decode_output_len;
  if (o.decode_output_len < 2) return Status::error("--decode-output-len: must be >= 2");
  if (f.max_num_batched_tokens >= 0) o.max_num_batched_tokens = f.max_num_batched_tokens;
  if (o.max_num_batched_tokens < 16) return Status::error("--max-num-batched-tokens: must be >= 16");
  if (!f.concurrency.empty()) {
    for (const std::string& item : split(f.concurrency)) {
      size_t eq = item.find('=');
      std::string name = eq == std::string::npos ? "" : item.substr(0, eq);
      MPS_ASSIGN_OR_RETURN(std::vector<int> v,
                           parse_ints(eq == std::string::npos ? item : item.substr(eq + 1), "--concurrency", 1));
      if (name.empty() || name == "decode") o.decode_concurrency = v[0];
      if (name.empty() || name == "prefill") o.prefill_concurrency = v[0];
      if (!name.empty() && name != "decode" && name != "prefill") {
        return Status::errorf("--concurrency: '{}' is not decode=N, prefill=N or N", item);
      }
    }
  }

  o.cpu_overhead = f.cpu_overhead;
  o.cpu_overhead_shape = full_shape_name(f.cpu_overhead_shape.empty() ? (cpu ? "tiny" : "qwen2.5-3b")
                                                                      : f.cpu_overhead_shape);
  MPS_RETURN_IF_ERROR(
      parse_members(o.cpu_overhead_shape, "--cpu-overhead-shape", model::known_shapes()).status());
  o.step_cpu_us = f.step_cpu_us >= 0 ? f.step_cpu_us : (cpu ? 2000 : 3000);
  if (o.step_cpu_us < 1 || o.step_cpu_us > 10'000'000) {
    return Status::errorf("--step-cpu-us: {} is outside 1..10000000", o.step_cpu_us);
  }
  o.cpu_overhead_context = f.cpu_overhead_context >= 0 ? f.cpu_overhead_context : (cpu ? 32 : 512);
  if (o.cpu_overhead_context < 1) return Status::error("--cpu-overhead-context: must be >= 1");

  // Every shape's context window must hold the longest prompt plus its output.
  int longest = *std::max_element(o.contexts.begin(), o.contexts.end());
  std::vector<std::string> all_shapes = o.shapes;
  if (o.cpu_overhead) all_shapes.push_back(o.cpu_overhead_shape);
  for (const std::string& s : all_shapes) {
    auto cfg = study_shape_config(o, s);
    if (!cfg) return cfg.status();
    int64_t need = std::max(longest, o.cpu_overhead_context) + o.decode_output_len;
    if (cfg->max_position_embeddings > 0 && need > cfg->max_position_embeddings) {
      return Status::errorf("--contexts: {} + {} output tokens exceed {}'s {} positions", longest,
                            o.decode_output_len, s, cfg->max_position_embeddings);
    }
  }

  if (!f.models_dir.empty()) {
    o.models_dir = f.models_dir;
  } else {
    // The cache the embedded default model lives in (model/default_model.cpp), else beside the results.
    if (auto d = env::get(env::kCacheDir)) {
      o.models_dir = std::filesystem::path(*d) / "study-models";
    } else if (auto x = env::get(env::kXdgCacheHome)) {
      o.models_dir = std::filesystem::path(*x) / "mpserve" / "study-models";
    } else if (auto h = env::get(env::kHome)) {
      o.models_dir = std::filesystem::path(*h) / ".cache" / "mpserve" / "study-models";
    } else {
      o.models_dir = o.out_dir / "models";
    }
  }
  return o;
}

std::string ServerConfig::label() const {
  return fmt::format("{}_e{}_mps-{}_{}_a{}_s{}", shape, engines, mps, ablation, async, step_cpu_us);
}

int ServerGroup::todo() const {
  return static_cast<int>(std::count_if(cells.begin(), cells.end(), [](const Cell& c) { return !c.measured; }));
}

int cell_concurrency(const StudyOptions& o, const MachineInfo& m, const std::string& shape, int context,
                     const std::string& workload) {
  int want = workload == "prefill" ? o.prefill_concurrency : o.decode_concurrency;
  if (o.device != "cuda" || m.gpu_memory_mib <= 0) return want;
  auto cfg = study_shape_config(o, shape);
  if (!cfg) return want;
  // note: mirrors the engine's budget (bf16 weights and KV; --gpu-memory-fraction 0.9/N of the
  // card) with 2 GiB per engine kept for activations and workspace; rounded down so it errs on
  // the side of every sequence fitting.
  const int n = o.engines.back();
  const double card = static_cast<double>(m.gpu_memory_mib) * 1024 * 1024;
  const double per_engine = card * std::floor(900.0 / n) / 1000.0 - 2.0 * cfg->num_parameters() - 2.0 * (1 << 30);
  const double kv_per_token = 2.0 * cfg->num_layers * cfg->num_kv_heads * cfg->head_dim * 2;
  const int out_len = workload == "prefill" ? 1 : o.decode_output_len;
  const double tokens = std::max(0.0, per_engine) / kv_per_token * n;
  int cap = static_cast<int>(tokens / (context + out_len + 16));
  return std::max(1, std::min(want, cap));
}

Result<Plan> make_plan(const StudyOptions& o, const MachineInfo& m, const std::set<std::string>& measured,
                       const std::set<std::string>& models_cached) {
  struct Variant {
    std::string shape, ablation, mps;
    int engines, async;
    int64_t step;
    std::vector<int> contexts;
    std::vector<std::string> workloads;
  };
  std::vector<Variant> variants;
  // The 1-engine baseline runs once, MPS off (how one engine runs without co-location); N > 1
  // engines run with each --mps value.
  const std::string baseline_mps = "off";
  for (const std::string& shape : o.shapes) {
    for (const std::string& ablation : o.ablations) {
      for (int n : o.engines) {
        for (const std::string& mps : n == 1 ? std::vector<std::string>{baseline_mps} : o.mps) {
          variants.push_back({shape, ablation, mps, n, 0, 0, o.contexts, o.workloads});
        }
      }
    }
  }
  if (o.cpu_overhead) {
    // CPU-overhead experiment: 1 engine, 1 engine with async scheduling, 2 engines under MPS
    // (MPS off on CPU engines), all with the injected step cost, decode at one context.
    const std::string two_mps = o.device == "cuda" ? "on" : "off";
    std::vector<int> ctx{o.cpu_overhead_context};
    std::vector<std::string> wl{"decode"};
    variants.push_back({o.cpu_overhead_shape, "full", baseline_mps, 1, 0, o.step_cpu_us, ctx, wl});
    variants.push_back({o.cpu_overhead_shape, "full", baseline_mps, 1, 1, o.step_cpu_us, ctx, wl});
    variants.push_back({o.cpu_overhead_shape, "full", two_mps, 2, 0, o.step_cpu_us, ctx, wl});
  }

  Plan plan;
  std::set<std::string> shapes_to_make;
  for (const Variant& v : variants) {
    ServerGroup g;
    g.server.shape = v.shape;
    g.server.engines = v.engines;
    g.server.mps = v.mps;
    g.server.ablation = v.ablation;
    g.server.async = v.async;
    g.server.step_cpu_us = v.step;
    int longest = 0, most_seqs = 1;
    for (int context : v.contexts) {
      for (const std::string& workload : v.workloads) {
        for (int rep = 0; rep < o.repeats; ++rep) {
          Cell c;
          ResultRow& r = c.row;
          r.gpu = m.gpu;
          r.driver = m.driver;
          r.cuda = m.cuda;
          r.commit = m.commit;
          r.device = o.device;
          r.shape = v.shape;
          r.params_b = shape_params_b(o, v.shape);
          r.context = context;
          r.workload = workload;
          r.engines = v.engines;
          r.mps = v.mps;
          r.ablation = v.ablation;
          r.async = v.async;
          r.step_cpu_us = v.step;
          r.repeat = rep;
          r.concurrency = cell_concurrency(o, m, v.shape, context, workload);
          r.input_len = context;
          r.output_len = workload == "prefill" ? 1 : o.decode_output_len;
          r.warmup_s = o.warmup_s;
          r.window_s = o.window_s;
          c.measured = measured.count(measurement_key(r)) > 0;
          longest = std::max(longest, r.input_len + r.output_len);
          most_seqs = std::max(most_seqs, r.concurrency);
          g.cells.push_back(std::move(c));
        }
      }
    }
    // Slack for the block rounding of the engine's KV accounting.
    g.server.max_model_len = round_up(longest + 16, 16);
    g.server.max_num_seqs = most_seqs;
    int todo = g.todo();
    plan.cells_total += static_cast<int>(g.cells.size());
    plan.cells_todo += todo;
    if (todo > 0) {
      ++plan.servers_to_start;
      if (!models_cached.count(v.shape)) shapes_to_make.insert(v.shape);
      // note: rough costs from the CPU and H200 runs so far: a server start loads the weights
      // (~3 s per billion parameters on a GPU box) after a fixed few seconds; each window adds
      // ~2 s of drain and bookkeeping.
      plan.estimated_s += 8 + 3 * shape_params_b(o, v.shape) + todo * (o.warmup_s + o.window_s + 2);
    }
    plan.groups.push_back(std::move(g));
  }
  for (const std::string& s : shapes_to_make) plan.estimated_s += 2 + 9 * shape_params_b(o, s);
  return plan;
}

std::string describe_plan(const Plan& plan, const StudyOptions& o, const MachineInfo& m) {
  std::string out = fmt::format("study plan: device {}, {} ({}), out {}\n", o.device, m.gpu, m.cuda == "none" ? "no CUDA" : "CUDA " + m.cuda,
                                o.out_dir.string());
  out += fmt::format("  shapes {} | contexts {} | workloads {} | engines {} | mps {} | ablations {} | repeats {} | "
                     "warmup {} s, window {} s\n",
                     fmt::join(o.shapes, ","), fmt::join(o.contexts, ","), fmt::join(o.workloads, ","),
                     fmt::join(o.engines, ","), fmt::join(o.mps, ","), fmt::join(o.ablations, ","), o.repeats,
                     o.warmup_s, o.window_s);
  if (o.cpu_overhead) {
    out += fmt::format("  cpu-overhead experiment: {} decode at context {}, --step-cpu-us {}\n", o.cpu_overhead_shape,
                       o.cpu_overhead_context, o.step_cpu_us);
  }
  for (const ServerGroup& g : plan.groups) {
    std::map<std::string, int> conc;
    for (const Cell& c : g.cells) conc[fmt::format("{}@{}", c.row.workload, c.row.context)] = c.row.concurrency;
    std::string cs;
    for (const auto& [k, v] : conc) cs += fmt::format(" {}:c{}", k, v);
    out += fmt::format("  {:<44} cells {:>3}, to measure {:>3}{}  max-model-len {}, max-num-seqs {};{}\n",
                       g.server.label(), g.cells.size(), g.todo(), g.todo() == 0 ? " (skipped: all measured)" : "",
                       g.server.max_model_len, g.server.max_num_seqs, cs);
  }
  out += fmt::format("  total: {} servers to start, {} of {} windows to measure, about {:.0f} min\n",
                     plan.servers_to_start, plan.cells_todo, plan.cells_total, plan.estimated_s / 60);
  return out;
}

}  // namespace mpserve::study
