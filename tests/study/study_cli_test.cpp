// `mpserve study` end to end on CPU engines (real serve, engines and router on loopback), its
// resume, and its usage errors.
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <set>

#include <gtest/gtest.h>

#include "cli/cli_test_util.h"
#include "study/results.h"

namespace mpserve::study {
namespace {

namespace fs = std::filesystem;
using testing::read_all;
using testing::run_mpserve;

TEST(StudyCli, quick_cpu_study_measures_every_cell_then_a_rerun_skips_them_all) {
  fs::path dir = fs::temp_directory_path() / fmt::format("mpserve-study-e2e-{}", getpid());
  fs::remove_all(dir);
  // The --quick CPU grid (tiny; contexts 32,128; decode and prefill; 1 and 2 engines) with
  // shorter windows to keep the test quick.
  const std::string args = "study --quick --device cpu --out " + dir.string() + " --models-dir " +
                           (dir / "models").string() + " --warmup 0.5 --window 1.5";
  auto t0 = std::chrono::steady_clock::now();
  auto r = run_mpserve(args);
  double first_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("a CPU run says nothing about MPS"), std::string::npos);
  EXPECT_NE(r.out.find("study: done measured=8 skipped=0 failures=0"), std::string::npos) << r.out;

  auto rows = load_results(dir / "results.csv");
  ASSERT_TRUE(rows) << rows.error();
  ASSERT_EQ(rows->size(), 8u);
  std::set<std::string> cells;
  for (const ResultRow& row : *rows) {
    // Tokens arrived in the window (on a loaded 2-core machine a 1.5 s window may end before
    // any 16-token request of a CPU engine finishes; its in-window tokens still count).
    EXPECT_GT(row.input_tok_s + row.output_tok_s, 0) << format_result_row(row);
    EXPECT_EQ(row.failed, 0) << format_result_row(row);
    EXPECT_GT(row.throughput, 0);
    EXPECT_EQ(row.device, "cpu");
    EXPECT_EQ(row.gpu.rfind("cpu (", 0), 0u);
    EXPECT_EQ(row.shape, "tiny");
    EXPECT_DOUBLE_EQ(row.throughput, row.workload == "prefill" ? row.input_tok_s : row.output_tok_s);
    cells.insert(fmt::format("{}-{}-{}", row.context, row.workload, row.engines));
  }
  EXPECT_EQ(cells.size(), 8u);
  std::string report = read_all(dir / "report.md");
  EXPECT_NE(report.find("a CPU run says nothing about MPS"), std::string::npos);
  EXPECT_NE(report.find("Gain of 2 engines (MPS off) over 1 engine"), std::string::npos);
  EXPECT_TRUE(fs::exists(dir / "logs" / "tiny_e2_mps-off_full_a0_s0.serve.log"));

  const std::string csv_before = read_all(dir / "results.csv");
  t0 = std::chrono::steady_clock::now();
  r = run_mpserve(args);
  double second_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("study: done measured=0 skipped=8"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("study: starting"), std::string::npos) << r.out;  // no server started
  EXPECT_EQ(read_all(dir / "results.csv"), csv_before);
  EXPECT_LT(second_s, 10.0);
  EXPECT_LT(second_s, first_s);

  // The report alone, from the CSV.
  fs::remove(dir / "report.md");
  r = run_mpserve("study --report-only --device cpu --out " + dir.string());
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_TRUE(fs::exists(dir / "report.md"));
  fs::remove_all(dir);
}

TEST(StudyCli, dry_run_prints_the_plan_and_measures_nothing) {
  fs::path dir = fs::temp_directory_path() / fmt::format("mpserve-study-dry-{}", getpid());
  fs::remove_all(dir);
  auto r = run_mpserve("study --device cpu --dry-run --cpu-overhead --out " + dir.string() + " --models-dir " +
                       (dir / "models").string());
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("tiny_e1_mps-off_full_a1_s2000"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("servers to start"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(dir / "results.csv"));
  fs::remove_all(dir);
}

TEST(StudyCli, a_configuration_that_cannot_start_fails_the_study_with_exit_1_and_no_rows) {
  fs::path dir = fs::temp_directory_path() / fmt::format("mpserve-study-fail-{}", getpid());
  fs::remove_all(dir);
  auto r = run_mpserve("study --quick --device cpu --out " + dir.string() + " --models-dir /proc/no-such-dir");
  EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
  EXPECT_NE(r.err.find("cannot create models dir /proc/no-such-dir"), std::string::npos) << r.err;
  EXPECT_NE(r.out.find("failures=2"), std::string::npos) << r.out;  // both configurations tried
  auto rows = load_results(dir / "results.csv");
  ASSERT_TRUE(rows) << rows.error();
  EXPECT_TRUE(rows->empty());
  fs::remove_all(dir);
}

TEST(StudyCli, bad_flags_exit_2_with_a_message) {
  struct Case {
    std::string flags, message;
  };
  for (const Case& c : {Case{"--shapes qwen9-1t", "--shapes: unknown value 'qwen9-1t'"},
                        Case{"--contexts 128,0", "--contexts: 0 is below the minimum 1"},
                        Case{"--repeats 0", "--repeats: 0 is outside 1..100"},
                        Case{"--mps on", "--mps on needs --device cuda"}}) {
    auto r = run_mpserve("study --device cpu --out /tmp/mpserve-study-never " + c.flags);
    EXPECT_EQ(r.exit_code, 2) << c.flags << ": " << r.err;
    EXPECT_NE(r.err.find(c.message), std::string::npos) << r.err;
  }
  EXPECT_FALSE(fs::exists("/tmp/mpserve-study-never"));
}

}  // namespace
}  // namespace mpserve::study
