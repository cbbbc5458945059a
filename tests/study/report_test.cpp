// report.md and the plots from a fixture results.csv.
#include "study/report.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

#include "study/plots.h"
#include "supervisor/process.h"

namespace mpserve::study {
namespace {

namespace fs = std::filesystem;

std::string read_all(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Fixture: one shape, decode at two contexts, 3 repeats, 1 vs 2 engines; ablations at 128;
// a CPU-overhead triple. Throughputs chosen so the expected numbers are exact.
std::string fixture_csv() {
  std::string csv = std::string(kResultsHeader) + "\n";
  auto add = [&](int context, int engines, const char* mps, const char* ablation, int async, int step, int repeat,
                 double tput) {
    csv += fmt::format(
        "2025-01-01T00:00:0{}Z,NVIDIA H200,580.159.04,13.0,abc123,cuda,qwen2.5-0.5b,0.494,{},decode,{},{},{},{},{},{},"
        "64,{},256,5.000,15.000,100,0,1000.000,{:.3f},{:.3f},20.000,5.000\n",
        repeat, context, engines, mps, ablation, async, step, repeat, context, tput, tput);
  };
  int r = 0;
  for (double t : {90.0, 100.0, 110.0}) add(128, 1, "off", "full", 0, 0, r++, t);
  r = 0;
  for (double t : {140.0, 150.0, 160.0}) add(128, 2, "on", "full", 0, 0, r++, t);
  r = 0;
  for (double t : {400.0, 400.0, 400.0}) add(2048, 1, "off", "full", 0, 0, r++, t);
  r = 0;
  for (double t : {440.0, 440.0, 440.0}) add(2048, 2, "on", "full", 0, 0, r++, t);
  add(128, 1, "off", "attention", 0, 0, 0, 300);
  add(128, 2, "on", "attention", 0, 0, 0, 570);
  add(128, 1, "off", "mlp", 0, 0, 0, 600);
  add(128, 2, "on", "mlp", 0, 0, 0, 780);
  add(512, 1, "off", "full", 0, 3000, 0, 200);
  add(512, 1, "off", "full", 1, 3000, 0, 260);
  add(512, 2, "on", "full", 0, 3000, 0, 270);
  return csv;
}

fs::path fixture_dir() {
  fs::path d = fs::temp_directory_path() / fmt::format("mpserve-study-report-{}", getpid());
  fs::remove_all(d);
  fs::create_directories(d);
  std::ofstream(d / "results.csv") << fixture_csv();
  std::ofstream(d / "commands.txt") << "2025-01-01T00:00:00Z  mpserve study --out fixture\n";
  return d;
}

TEST(StudyReport, tables_show_gains_spreads_ablations_and_cpu_overhead) {
  fs::path dir = fixture_dir();
  auto rows = load_results(dir / "results.csv");
  ASSERT_TRUE(rows) << rows.error();
  ASSERT_EQ(rows->size(), 19u);
  auto files = write_report(*rows, dir);
  ASSERT_TRUE(files) << files.error();
  std::string md = read_all(dir / "report.md");
  // Machine and command.
  EXPECT_NE(md.find("NVIDIA H200"), std::string::npos);
  EXPECT_NE(md.find("580.159.04"), std::string::npos);
  EXPECT_NE(md.find("mpserve study --out fixture"), std::string::npos);
  EXPECT_EQ(md.find("says nothing about MPS"), std::string::npos);  // a GPU run has no CPU banner
  // Gain table: 150/100 - 1 = +50%, range 140/110 - 1 .. 160/90 - 1; 440/400 - 1 = +10%.
  EXPECT_NE(md.find("| qwen2.5-0.5b | 0.49 | +50.0% (+27.3%…+77.8%) | +10.0% (+10.0%…+10.0%) |"), std::string::npos)
      << md;
  // Throughput table with median (min–max).
  EXPECT_NE(md.find("100.0 (90.0–110.0)"), std::string::npos);
  EXPECT_NE(md.find("150.0 (140.0–160.0)"), std::string::npos);
  // Ablations: attention +90%, MLP +30%, w_attn 2/3, expected +70%, measured +50%: -20 pp.
  EXPECT_NE(md.find("| +90.0% | +30.0% | +50.0% | 0.67 | +70.0% | -20.0 pp |"), std::string::npos) << md;
  // CPU overhead: async +30%, 2 engines +35% over the 1-engine run at the same step cost.
  EXPECT_NE(md.find("| 1 engine + async scheduling | 260.0 | +30.0% |"), std::string::npos) << md;
  EXPECT_NE(md.find("| 2 engines, MPS on | 270.0 | +35.0% |"), std::string::npos) << md;
  EXPECT_NE(md.find("| 1 engine | 200.0 | baseline |"), std::string::npos) << md;

  if (gnuplot_png_terminal().empty()) {
    EXPECT_TRUE(files->plots.empty());
    EXPECT_NE(md.find("gnuplot"), std::string::npos);
  } else {
    ASSERT_GE(files->plots.size(), 3u) << files->plot_note;  // gain (decode), ablation (decode), expected vs measured
    for (const fs::path& png : files->plots) {
      std::string bytes = read_all(png);
      ASSERT_GE(bytes.size(), 8u);
      EXPECT_EQ(bytes.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8)) << png;
      EXPECT_TRUE(fs::exists(fs::path(png).replace_extension(".dat")));
      EXPECT_NE(md.find("plots/" + png.filename().string()), std::string::npos);
    }
    EXPECT_TRUE(fs::exists(dir / "plots" / "gain_vs_context_decode.png"));
    EXPECT_TRUE(fs::exists(dir / "plots" / "expected_vs_measured.png"));
  }
  fs::remove_all(dir);
}

TEST(StudyReport, cpu_rows_get_the_banner) {
  ResultRow r;
  r.timestamp = "2025-01-01T00:00:00Z";
  r.gpu = "cpu (test)";
  r.device = "cpu";
  r.shape = "tiny";
  r.workload = "decode";
  r.mps = "off";
  r.ablation = "full";
  r.context = 32;
  r.throughput = 5;
  std::string md = render_report({r}, {}, {}, "", "");
  EXPECT_NE(md.find("a CPU run says nothing about MPS"), std::string::npos);
}

}  // namespace
}  // namespace mpserve::study
