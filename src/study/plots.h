// The study's PNG plots, drawn by gnuplot run as a child process from small .dat and .gp files
// written next to the PNGs: gain vs context per workload (one line per shape and engine count),
// ablation bars, and expected vs measured gain.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "study/results.h"

namespace mpserve::study {

struct PlotResult {
  std::vector<std::filesystem::path> pngs;  // drawn, in report order
  std::string note;                         // non-empty when gnuplot is missing or a plot failed
};

// The gnuplot PNG terminal that works here ("pngcairo", else "png"), or "" without gnuplot.
std::string gnuplot_png_terminal();

// Draws every plot the cells have data for into `dir` (created). Never fails: problems go to note.
PlotResult draw_plots(const std::vector<CellSummary>& cells, const std::filesystem::path& dir);

}  // namespace mpserve::study
