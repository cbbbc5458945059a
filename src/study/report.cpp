#include "study/report.h"

#include <algorithm>
#include <ctime>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include <fmt/format.h>

#include "common/file_util.h"
#include "study/plots.h"

namespace mpserve::study {
namespace {

namespace fs = std::filesystem;

bool is_main(const ResultRow& r) { return r.ablation == "full" && r.async == 0 && r.step_cpu_us == 0; }

std::string tput(const Spread& s) {
  if (s.n <= 1) return fmt::format("{:.1f}", s.median);
  return fmt::format("{:.1f} ({:.1f}–{:.1f})", s.median, s.min, s.max);
}

std::string gain_cell(const std::optional<Gain>& g, int repeats) {
  if (!g) return "–";
  if (repeats <= 1) return format_gain(g->median);
  return fmt::format("{} ({}…{})", format_gain(g->median), format_gain(g->min), format_gain(g->max));
}

std::string engines_label(const ResultRow& r) {
  return r.engines == 1 ? "1 engine" : fmt::format("{} engines, MPS {}", r.engines, r.mps);
}

std::vector<std::string> lines_of(const fs::path& p) {
  std::vector<std::string> out;
  std::ifstream in(p);
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty()) out.push_back(line);
  }
  return out;
}

std::string today_utc() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%d %H:%M UTC", &tm);
  return buf;
}

double shape_params(const std::vector<const CellSummary*>& cells, const std::string& shape) {
  for (const CellSummary* c : cells) {
    if (c->first.shape == shape) return c->first.params_b;
  }
  return 0;
}

// Gain tables (rows shape, columns contexts) and throughput tables of one workload, main cells only.
void workload_tables(std::string& md, const std::vector<CellSummary>& cells, const std::string& workload) {
  std::vector<const CellSummary*> mine;
  std::set<int> contexts;
  std::vector<std::string> shapes;
  std::set<std::pair<int, std::string>> configs;  // (engines, mps)
  for (const CellSummary& c : cells) {
    if (c.first.workload != workload || !is_main(c.first)) continue;
    mine.push_back(&c);
    contexts.insert(c.first.context);
    if (std::find(shapes.begin(), shapes.end(), c.first.shape) == shapes.end()) shapes.push_back(c.first.shape);
    configs.insert({c.first.engines, c.first.engines == 1 ? "" : c.first.mps});
  }
  if (mine.empty()) return;
  auto find = [&](const std::string& shape, int ctx, int engines, const std::string& mps) -> const CellSummary* {
    for (const CellSummary* c : mine) {
      if (c->first.shape == shape && c->first.context == ctx && c->first.engines == engines &&
          (engines == 1 || c->first.mps == mps)) {
        return c;
      }
    }
    return nullptr;
  };
  std::string header = "| shape | params (B) |", rule = "| --- | ---: |";
  for (int ctx : contexts) {
    header += fmt::format(" ctx {} |", ctx);
    rule += " ---: |";
  }
  md += fmt::format("\n## Workload `{}` — throughput in {}\n", workload, throughput_unit(workload));
  for (const auto& [engines, mps] : configs) {
    if (engines == 1) continue;
    md += fmt::format("\n### Gain of {} engines (MPS {}) over 1 engine: median (range over repeats)\n\n", engines, mps);
    md += header + "\n" + rule + "\n";
    for (const std::string& shape : shapes) {
      md += fmt::format("| {} | {:.2f} |", shape, shape_params(mine, shape));
      for (int ctx : contexts) {
        const CellSummary* c = find(shape, ctx, engines, mps);
        const CellSummary* b = c ? find_baseline(cells, *c) : nullptr;
        md += fmt::format(" {} |", gain_cell(c && b ? gain_of(*c, *b) : std::nullopt, c ? c->throughput.n : 0));
      }
      md += "\n";
    }
  }
  md += fmt::format("\n### Throughput ({}): median (min–max over repeats)\n\n", throughput_unit(workload));
  md += "| shape | engines |" + header.substr(header.find("| ctx") + 1) + "\n| --- | --- |" +
        rule.substr(std::string("| --- | ---: |").size()) + "\n";
  for (const std::string& shape : shapes) {
    for (const auto& [engines, mps] : configs) {
      ResultRow label;
      label.engines = engines;
      label.mps = mps;
      md += fmt::format("| {} | {} |", shape, engines_label(label));
      for (int ctx : contexts) {
        const CellSummary* c = find(shape, ctx, engines, mps);
        md += fmt::format(" {} |", c ? tput(c->throughput) : std::string("–"));
      }
      md += "\n";
    }
  }
}

}  // namespace

std::string format_gain(double gain) { return fmt::format("{:+.1f}%", gain * 100); }

std::string render_report(const std::vector<ResultRow>& rows, const std::vector<std::string>& commands,
                          const std::vector<std::string>& plots, const std::string& plot_note,
                          const std::string& problems_note) {
  const std::vector<CellSummary> cells = summarize(rows);
  std::string md = "# mpserve study: does co-location pay?\n";
  bool any_cpu = std::any_of(rows.begin(), rows.end(), [](const ResultRow& r) { return r.device == "cpu"; });
  if (any_cpu) {
    md += "\n> **device=cpu: a CPU run says nothing about MPS.** These engines ran on the CPU, where there is no "
          "GPU to share; the numbers check the study's machinery, not co-location.\n";
  }

  md += "\n## Machine\n\n| gpu | driver | CUDA | commit | device | measured (UTC) | rows |\n| --- | --- | --- | --- | --- | "
        "--- | ---: |\n";
  std::map<std::string, std::vector<const ResultRow*>> machines;
  for (const ResultRow& r : rows) {
    machines[fmt::format("| {} | {} | {} | {} | {} |", r.gpu, r.driver, r.cuda, r.commit, r.device)].push_back(&r);
  }
  for (const auto& [key, rs] : machines) {
    auto [lo, hi] = std::minmax_element(rs.begin(), rs.end(),
                                        [](const ResultRow* a, const ResultRow* b) { return a->timestamp < b->timestamp; });
    md += fmt::format("{} {} – {} | {} |\n", key, (*lo)->timestamp, (*hi)->timestamp, rs.size());
  }
  md += fmt::format("\nReport generated {}.\n", today_utc());

  md += "\n## How it was measured\n\n";
  if (!commands.empty()) {
    md += "```\n";
    for (const std::string& c : commands) md += c + "\n";
    md += "```\n\n";
  }
  md += "Each server configuration (shape × engines × MPS × ablation × async × step CPU cost) is one `mpserve serve` "
        "(router in front, least-requests, engines with an equal share of the card). Each cell is one closed-loop "
        "window of the in-process load generator: `concurrency` streamed requests in flight, a warm-up, then a fixed "
        "window in which arriving tokens are counted. Decode cells send prompts of `context` tokens and read "
        "`output_len` tokens (throughput = output tokens/s); prefill cells read 1 token (throughput = prompt tokens/s). "
        "1 and N engines get the same concurrency and request shape. Gain = throughput(N) / throughput(1) − 1 on "
        "medians; its range pairs the worst and best repeats. Models have random weights (`mpserve make-model`).\n";

  for (const char* w : {"decode", "prefill"}) workload_tables(md, cells, w);

  // Ablations: measured full-model gain next to the gains of each part and the expected gain.
  std::string abl;
  for (const CellSummary& c : cells) {
    if (c.first.engines == 1 || c.first.ablation != "full" || c.first.async || c.first.step_cpu_us) continue;
    auto e = expected_gain_for(cells, c);
    if (!e) continue;
    const CellSummary* b = find_baseline(cells, c);
    auto g = b ? gain_of(c, *b) : std::nullopt;
    abl += fmt::format("| {} | {} | {} | {} | {} | {} | {} | {:.2f} | {} | {} |\n", c.first.shape, c.first.context,
                       c.first.workload, engines_label(c.first), format_gain(e->gain_attn), format_gain(e->gain_mlp),
                       g ? format_gain(g->median) : "–", e->w_attn, format_gain(e->expected),
                       g ? fmt::format("{:+.1f} pp", (g->median - e->expected) * 100) : "–");
  }
  if (!abl.empty()) {
    md += "\n## Ablations: where the overlap comes from\n\n`attention` = the model with its MLP blocks removed "
          "(engine `--ablate mlp`), `mlp` = attention removed (`--ablate attention`). w_attn = t_attn / (t_attn + "
          "t_mlp), with t = 1 / (1-engine throughput) of each ablated model; expected = w_attn · gain(attention) + "
          "(1 − w_attn) · gain(mlp).\n\n| shape | context | workload | engines | gain attention-only | gain "
          "MLP-only | gain full (measured) | w_attn | gain full (expected) | measured − expected |\n| --- | ---: | --- | "
          "--- | ---: | ---: | ---: | ---: | ---: | ---: |\n" + abl;
  }

  // CPU-overhead experiment: injected host time per engine step.
  std::string cpu;
  for (const CellSummary& c : cells) {
    if (c.first.step_cpu_us == 0) continue;
    const CellSummary* base = nullptr;
    for (const CellSummary& b : cells) {
      if (b.first.engines == 1 && b.first.async == 0 && b.first.step_cpu_us == c.first.step_cpu_us &&
          b.first.shape == c.first.shape && b.first.context == c.first.context &&
          b.first.workload == c.first.workload && b.first.ablation == c.first.ablation &&
          b.first.gpu == c.first.gpu && b.first.concurrency == c.first.concurrency) {
        base = &b;
      }
    }
    std::string what = engines_label(c.first) + (c.first.async ? " + async scheduling" : "");
    bool is_base = &c == base;
    cpu += fmt::format("| {} | {} | {} | {} | {} | {} |\n", c.first.shape, c.first.context, c.first.step_cpu_us, what,
                       tput(c.throughput),
                       is_base ? "baseline" : gain_cell(base ? gain_of(c, *base) : std::nullopt, c.throughput.n));
  }
  if (!cpu.empty()) {
    md += "\n## CPU-overhead experiment (decode, injected host time per engine step)\n\n| shape | context | "
          "step_cpu_us | configuration | output tok/s | gain over 1 engine |\n| --- | ---: | ---: | --- | ---: | ---: |\n" +
          cpu;
  }

  if (!plots.empty() || !plot_note.empty()) {
    md += "\n## Plots\n\n";
    for (const std::string& p : plots) md += fmt::format("![{}]({})\n\n", fs::path(p).stem().string(), p);
    if (!plot_note.empty()) md += "Note: " + plot_note + "\n";
  }

  md += "\n## Every cell\n\n| shape | context | workload | engines | ablation | async | step_cpu_us | concurrency | in/out "
        "len | repeats | throughput | input tok/s | output tok/s | TTFT p50 ms | TPOT p50 ms | completed | failed |\n"
        "| --- | ---: | --- | --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | "
        "---: |\n";
  int64_t failed = 0;
  for (const CellSummary& c : cells) {
    const ResultRow& r = c.first;
    failed += c.failed;
    md += fmt::format("| {} | {} | {} | {} | {} | {} | {} | {} | {}/{} | {} | {} | {:.1f} | {:.1f} | {:.1f} | {:.2f} | {} | "
                      "{} |\n",
                      r.shape, r.context, r.workload, engines_label(r), r.ablation, r.async, r.step_cpu_us,
                      r.concurrency, r.input_len, r.output_len, c.throughput.n, tput(c.throughput),
                      c.input_tok_s.median, c.output_tok_s.median, c.ttft_p50_ms, c.tpot_p50_ms, c.completed, c.failed);
  }
  if (failed > 0) md += fmt::format("\n**{} requests failed** across the cells above; see logs/.\n", failed);
  if (!problems_note.empty()) md += "\n" + problems_note + "\n";
  return md;
}

Result<ReportFiles> write_report(const std::vector<ResultRow>& rows, const fs::path& out_dir) {
  ReportFiles files;
  files.report = out_dir / "report.md";
  std::vector<std::string> rel;
  PlotResult plots = draw_plots(summarize(rows), out_dir / "plots");
  for (const fs::path& p : plots.pngs) {
    files.plots.push_back(p);
    rel.push_back("plots/" + p.filename().string());
  }
  files.plot_note = plots.note;
  std::string problems;
  auto problem_lines = lines_of(out_dir / "logs" / "problems.txt");
  if (!problem_lines.empty()) {
    problems = fmt::format("Server logs had {} warning or error lines (engine exits, restarts, MPS recoveries, failed "
                           "starts): logs/problems.txt.",
                           problem_lines.size());
  }
  std::string md = render_report(rows, lines_of(out_dir / "commands.txt"), rel, plots.note, problems);
  MPS_RETURN_IF_ERROR(write_file_atomic(files.report, md));
  return files;
}

}  // namespace mpserve::study
