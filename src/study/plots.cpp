#include "study/plots.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <map>
#include <optional>

#include <fmt/format.h>

#include "common/file_util.h"
#include "supervisor/process.h"

namespace mpserve::study {
namespace {

namespace fs = std::filesystem;
constexpr std::chrono::milliseconds kGnuplotTimeout{60000};

bool is_main(const ResultRow& r) { return r.ablation == "full" && r.async == 0 && r.step_cpu_us == 0; }

// gnuplot single-quoted string: no quote inside.
std::string quoted(std::string s) {
  std::replace(s.begin(), s.end(), '\'', ' ');
  return "'" + s + "'";
}

struct Plot {
  std::string name;  // file stem
  std::string dat;   // data
  std::string body;  // gnuplot commands after the terminal and output lines
};

// Gain (%) vs context, one series per (shape, engines, mps) of the workload's main cells.
std::optional<Plot> gain_plot(const std::vector<CellSummary>& cells, const std::string& workload) {
  std::map<std::string, std::vector<std::array<double, 4>>> series;  // title -> (ctx, median, min, max)
  std::vector<std::string> order;
  for (const CellSummary& c : cells) {
    if (c.first.workload != workload || c.first.engines == 1 || !is_main(c.first)) continue;
    const CellSummary* b = find_baseline(cells, c);
    auto g = b ? gain_of(c, *b) : std::nullopt;
    if (!g) continue;
    std::string title = fmt::format("{}, {} engines, MPS {}", c.first.shape, c.first.engines, c.first.mps);
    if (!series.count(title)) order.push_back(title);
    series[title].push_back({double(c.first.context), g->median * 100, g->min * 100, g->max * 100});
  }
  if (series.empty()) return std::nullopt;
  Plot p;
  p.name = "gain_vs_context_" + workload;
  std::string plots;
  for (size_t i = 0; i < order.size(); ++i) {
    auto& pts = series[order[i]];
    std::sort(pts.begin(), pts.end());
    p.dat += fmt::format("# {}\n", order[i]);
    for (const auto& pt : pts) p.dat += fmt::format("{} {:.3f} {:.3f} {:.3f}\n", pt[0], pt[1], pt[2], pt[3]);
    p.dat += "\n\n";
    plots += fmt::format("{}'{}.dat' index {} using 1:2:3:4 with yerrorlines lw 2 title {}", i ? ", " : "", p.name, i,
                         quoted(order[i]));
  }
  p.body = fmt::format(
      "set title {}\nset logscale x 2\nset xlabel 'context (prompt tokens)'\nset ylabel 'gain over 1 engine (%)'\n"
      "set grid\nset key outside right top\nset xzeroaxis lt -1\nplot {}\n",
      quoted(fmt::format("{}: throughput gain of N co-located engines", workload)), plots);
  return p;
}

struct AblationPoint {
  std::string label;
  double full, attn, mlp, expected;
};

std::vector<AblationPoint> ablation_points(const std::vector<CellSummary>& cells, const std::string& workload) {
  std::vector<AblationPoint> out;
  for (const CellSummary& c : cells) {
    if (c.first.engines == 1 || !is_main(c.first) || (!workload.empty() && c.first.workload != workload)) continue;
    auto e = expected_gain_for(cells, c);
    const CellSummary* b = find_baseline(cells, c);
    auto g = b ? gain_of(c, *b) : std::nullopt;
    if (!e || !g) continue;
    out.push_back({fmt::format("{} ctx{} x{}{}", c.first.shape, c.first.context, c.first.engines,
                               c.first.mps == "on" ? "" : " noMPS"),
                   g->median * 100, e->gain_attn * 100, e->gain_mlp * 100, e->expected * 100});
  }
  return out;
}

std::optional<Plot> ablation_plot(const std::vector<CellSummary>& cells, const std::string& workload) {
  auto pts = ablation_points(cells, workload);
  if (pts.empty()) return std::nullopt;
  Plot p;
  p.name = "ablation_" + workload;
  p.dat = "# label full attention-only mlp-only expected (gain %)\n";
  for (const auto& a : pts) {
    p.dat += fmt::format("\"{}\" {:.3f} {:.3f} {:.3f} {:.3f}\n", a.label, a.full, a.attn, a.mlp, a.expected);
  }
  p.body = fmt::format(
      "set title {}\nset style data histograms\nset style histogram clustered gap 1\nset style fill solid 0.8 border -1\n"
      "set boxwidth 0.9\nset ylabel 'gain over 1 engine (%)'\nset xtics rotate by -30\nset grid ytics\n"
      "set key outside right top\nset xzeroaxis lt -1\n"
      "plot '{}.dat' using 2:xtic(1) title 'full (measured)', '' using 3 title 'attention only', "
      "'' using 4 title 'MLP only', '' using 5 title 'full (expected)'\n",
      quoted(fmt::format("{}: gain by what remains of the model", workload)), p.name);
  return p;
}

std::optional<Plot> expected_plot(const std::vector<CellSummary>& cells) {
  auto pts = ablation_points(cells, "");
  if (pts.empty()) return std::nullopt;
  Plot p;
  p.name = "expected_vs_measured";
  p.dat = "# expected measured (gain %)\n";
  double lo = 0, hi = 0;
  for (const auto& a : pts) {
    p.dat += fmt::format("{:.3f} {:.3f}\n", a.expected, a.full);
    lo = std::min({lo, a.expected, a.full});
    hi = std::max({hi, a.expected, a.full});
  }
  double pad = std::max(5.0, (hi - lo) * 0.1);
  p.body = fmt::format(
      "set title 'full-model gain: expected from the ablations vs measured'\nset xlabel 'expected gain (%)'\n"
      "set ylabel 'measured gain (%)'\nset grid\nset xrange [{0:.1f}:{1:.1f}]\nset yrange [{0:.1f}:{1:.1f}]\n"
      "set key left top\nplot x with lines dt 2 lc rgb 'gray' title 'measured = expected', "
      "'{2}.dat' using 1:2 with points pt 7 ps 1.5 title 'cells'\n",
      lo - pad, hi + pad, p.name);
  return p;
}

}  // namespace

std::string gnuplot_png_terminal() {
  for (const char* term : {"pngcairo", "png"}) {
    auto r = supervisor::run_command({"gnuplot", "-e", std::string("set terminal ") + term}, {}, "", kGnuplotTimeout);
    if (r && r->exit_code == 0) return term;
    if (!r) return "";  // not installed
  }
  return "";
}

PlotResult draw_plots(const std::vector<CellSummary>& cells, const fs::path& dir) {
  PlotResult out;
  std::vector<Plot> plots;
  for (const char* w : {"decode", "prefill"}) {
    if (auto p = gain_plot(cells, w)) plots.push_back(*p);
  }
  for (const char* w : {"decode", "prefill"}) {
    if (auto p = ablation_plot(cells, w)) plots.push_back(*p);
  }
  if (auto p = expected_plot(cells)) plots.push_back(*p);
  if (plots.empty()) return out;
  const std::string term = gnuplot_png_terminal();
  if (term.empty()) {
    out.note = "gnuplot (with a png or pngcairo terminal) not found: no plots";
    return out;
  }
  std::error_code ec;
  fs::create_directories(dir, ec);
  std::vector<std::string> failed;
  for (const Plot& p : plots) {
    fs::path png = dir / (p.name + ".png");
    std::string script = fmt::format("set terminal {} size 1000,600 noenhanced\nset output '{}.png'\n{}", term,
                                     p.name, p.body);
    Status st = write_file_atomic(dir / (p.name + ".dat"), p.dat);
    if (st) st = write_file_atomic(dir / (p.name + ".gp"), script);
    fs::remove(png, ec);
    // gnuplot runs in the plots directory so the scripts name their files relatively.
    auto r = st ? supervisor::run_command({"/bin/sh", "-c", "cd \"$0\" && exec gnuplot \"$1\"", dir.string(),
                                           p.name + ".gp"},
                                          {}, "", kGnuplotTimeout)
                : Result<supervisor::CommandOutput>(st);
    if (r && r->exit_code == 0 && fs::exists(png) && fs::file_size(png, ec) > 0) {
      out.pngs.push_back(png);
    } else {
      failed.push_back(p.name + (r ? ": " + r->output.substr(0, 200) : ": " + r.error()));
    }
  }
  if (!failed.empty()) out.note = fmt::format("gnuplot failed for {}", fmt::join(failed, "; "));
  return out;
}

}  // namespace mpserve::study
