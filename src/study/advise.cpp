#include "study/advise.h"

#include <unistd.h>

#include <algorithm>
#include <map>
#include <set>

#include <fmt/format.h>

#include "common/env.h"
#include "model/config.h"
#include "study/plan.h"
#include "study/runner.h"

namespace mpserve::study {
namespace fs = std::filesystem;

std::vector<fs::path> default_results_files() {
  std::vector<fs::path> files;
  if (auto p = env::get(env::kStudyResults); p && !p->empty() && fs::exists(*p)) files.emplace_back(*p);
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    std::vector<fs::path> shipped;
    for (const auto& e : fs::directory_iterator(exe.parent_path() / "share" / "mpserve" / "study", ec)) {
      if (e.is_regular_file() && e.path().extension() == ".csv") shipped.push_back(e.path());
    }
    std::sort(shipped.begin(), shipped.end());
    files.insert(files.end(), shipped.begin(), shipped.end());
  }
  return files;
}

Result<std::vector<ResultRow>> load_results_files(const std::vector<fs::path>& files) {
  std::vector<ResultRow> rows;
  for (const fs::path& f : files) {
    if (!fs::exists(f)) return Status::errorf("{}: no such file", f.string());
    auto r = load_results(f);
    if (!r) return Status::error(r.error());
    rows.insert(rows.end(), r->begin(), r->end());
  }
  return rows;
}

Result<std::vector<GainPoint>> study_gain_points(const std::vector<fs::path>& files) {
  auto rows = load_results_files(files.empty() ? default_results_files() : files);
  if (!rows) return Status::error(rows.error());
  return gain_points(*rows);
}

Result<double> model_params_b(const fs::path& model_dir) {
  auto cfg = model::load_model_config(model_dir);
  if (!cfg) return Status::error(cfg.error());
  return static_cast<double>(cfg->num_parameters()) / 1e9;
}

std::vector<GainPoint> gain_points(const std::vector<ResultRow>& rows) {
  // note: a gain is a ratio of two measurements of one engine build, so each build's rows are
  // summarized on their own: summarize() would merge a cell that two builds measured (the cell
  // key has no commit), and a baseline from another build would measure the engine change, not
  // co-location.
  std::vector<std::string> builds;
  std::map<std::string, std::vector<ResultRow>> by_build;
  for (const ResultRow& r : rows) {
    auto [it, inserted] = by_build.try_emplace(r.commit);
    if (inserted) builds.push_back(r.commit);
    it->second.push_back(r);
  }
  std::vector<GainPoint> points;
  for (const std::string& build : builds) {
    const std::vector<CellSummary> cells = summarize(by_build[build]);
    for (const CellSummary& c : cells) {
      const ResultRow& r = c.first;
      if (r.engines < 2 || r.ablation != "full" || r.async != 0 || r.step_cpu_us != 0) continue;
      if (r.mps != (r.device == "cpu" ? "off" : "on")) continue;
      const CellSummary* base = find_baseline(cells, c);
      if (!base) continue;
      auto g = gain_of(c, *base);
      if (!g) continue;
      GainPoint p;
      p.gpu = r.gpu;
      p.shape = r.shape;
      p.params_b = r.params_b;
      p.context = r.context;
      p.workload = r.workload;
      p.engines = r.engines;
      p.median = g->median;
      p.lo = g->min;
      p.hi = g->max;
      p.commit = r.commit;
      p.measured = r.timestamp;
      points.push_back(p);
    }
  }
  // Per GPU, workload and shape, only the newest study's points: its cells were measured with the
  // engine as it is now (a faster engine moves the gains a lot: on an H200 the 0.5B decode gain at
  // context 2048 went from +41% to +1% between two studies), and mixing contexts measured on
  // two builds would interpolate between them.
  std::map<std::string, std::pair<std::string, std::string>> newest;  // key -> (timestamp, commit)
  auto key = [](const GainPoint& p) { return p.gpu + "|" + p.workload + "|" + p.shape; };
  for (const GainPoint& p : points) {
    auto [it, first] = newest.try_emplace(key(p), p.measured, p.commit);
    if (!first && p.measured > it->second.first) it->second = {p.measured, p.commit};
  }
  std::erase_if(points, [&](const GainPoint& p) { return p.commit != newest[key(p)].second; });
  return points;
}

Result<std::vector<ResultRow>> run_probe(const ProbeOptions& p, FILE* log) {
  // A study of one cell: the same machinery, defaults and results format as `mpserve study`.
  StudyFlags f;
  f.device = p.device;
  f.model_dir = p.model_dir.string();
  f.contexts = std::to_string(p.context);
  f.workloads = p.workload;
  f.engines = std::to_string(p.engines);
  f.mps = p.device == "cuda" ? "on" : "off";
  f.ablations = "full";
  f.repeats = p.repeats;
  f.warmup_s = p.warmup_s;
  f.window_s = p.window_s;
  f.out_dir = p.out_dir.string();
  f.models_dir = (p.out_dir / "models").string();
  f.command_line = fmt::format("mpserve advise --probe --model {} --context {} --workload {} --device {}",
                               p.model_dir.string(), p.context, p.workload, p.device);
  auto o = resolve_options(f, p.device == "cuda");
  if (!o) return Status::errorf("probe: {}", o.error());
  const int rc = run_study(*o, log);
  if (rc != 0) {
    return Status::errorf("the probe's measurement failed (exit {}); its logs are in {}", rc,
                          (p.out_dir / "logs").string());
  }
  auto rows = load_results(p.out_dir / "results.csv");
  if (!rows) return Status::error(rows.error());
  return *rows;
}

}  // namespace mpserve::study
