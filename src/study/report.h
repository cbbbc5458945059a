// report.md and its plots from the rows of results.csv (nothing else: `--report-only` redraws
// the same report from the CSV alone, plus OUT/commands.txt and OUT/logs/problems.txt when present).
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "common/status.h"
#include "study/results.h"

namespace mpserve::study {

struct ReportFiles {
  std::filesystem::path report;               // OUT/report.md
  std::vector<std::filesystem::path> plots;   // OUT/plots/*.png actually drawn
  std::string plot_note;                      // why plots are missing, when they are
};

// Writes OUT/report.md and OUT/plots/ (PNG through gnuplot, with their .dat and .gp files).
// A missing or failing gnuplot leaves the report without plots and says so; it is not an error.
Result<ReportFiles> write_report(const std::vector<ResultRow>& rows, const std::filesystem::path& out_dir);

// The Markdown text; `plots` are paths relative to the report, `commands` the measuring commands.
std::string render_report(const std::vector<ResultRow>& rows, const std::vector<std::string>& commands,
                          const std::vector<std::string>& plots, const std::string& plot_note,
                          const std::string& problems_note);

// "+50.0%"; gain is a fraction (0.5).
std::string format_gain(double gain);

}  // namespace mpserve::study
