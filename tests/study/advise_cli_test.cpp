// `mpserve advise` and `mpserve serve --engines auto` end to end: the real binary reading a
// results.csv written through the study's own writer, and a live --probe on CPU engines.
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "cli/cli_test_util.h"
#include "study/advise.h"
#include "study/results.h"

namespace mpserve::study {
namespace {

namespace fs = std::filesystem;
using testing::run_mpserve;

ResultRow row(const std::string& shape, double params_b, int context, int engines, int repeat, double tput) {
  ResultRow r;
  r.timestamp = "2026-11-27T00:00:00Z";
  r.gpu = "NVIDIA Test GPU";
  r.driver = "580";
  r.cuda = "13.0";
  r.commit = "abc";
  r.device = "cuda";
  r.shape = shape;
  r.params_b = params_b;
  r.context = context;
  r.workload = "decode";
  r.engines = engines;
  r.mps = engines == 1 ? "off" : "on";
  r.ablation = "full";
  r.repeat = repeat;
  r.concurrency = 64;
  r.input_len = context;
  r.output_len = 128;
  r.window_s = 5;
  r.completed = 10;
  r.output_tok_s = tput;
  r.throughput = tput;
  return r;
}

// 0.5B: +50% at 128 tokens, +0% at 2048; 7B: -20% at 128 tokens.
fs::path write_fixture() {
  fs::path p = fs::temp_directory_path() / fmt::format("mpserve-advise-{}.csv", getpid());
  fs::remove(p);
  auto w = ResultsWriter::open(p);
  EXPECT_TRUE(w) << w.error();
  for (int rep = 0; rep < 2; ++rep) {
    EXPECT_TRUE(w->append(row("qwen2.5-0.5b", 0.5, 128, 1, rep, 1000)));
    EXPECT_TRUE(w->append(row("qwen2.5-0.5b", 0.5, 128, 2, rep, 1500)));
    EXPECT_TRUE(w->append(row("qwen2.5-0.5b", 0.5, 2048, 1, rep, 400)));
    EXPECT_TRUE(w->append(row("qwen2.5-0.5b", 0.5, 2048, 2, rep, 400)));
    EXPECT_TRUE(w->append(row("qwen2.5-7b", 7.0, 128, 1, rep, 500)));
    EXPECT_TRUE(w->append(row("qwen2.5-7b", 7.0, 128, 2, rep, 400)));
  }
  return p;
}

// Two studies read together: per shape the newer build's points replace the older ones, a shape
// only the older study measured keeps its points, and an N-engine cell whose only baseline was
// measured by another build gives no gain.
TEST(AdviseCli, newest_study_per_shape_wins_and_a_gain_pairs_one_build) {
  auto at = [](ResultRow r, const std::string& commit, const std::string& ts) {
    r.commit = commit;
    r.timestamp = ts;
    return r;
  };
  const std::string t_old = "2026-11-27T05:00:00Z", t_new = "2026-11-27T14:00:00Z";
  std::vector<ResultRow> old_rows, new_rows;
  for (int rep = 0; rep < 2; ++rep) {
    old_rows.push_back(at(row("qwen2.5-0.5b", 0.5, 128, 1, rep, 1000), "old", t_old));
    old_rows.push_back(at(row("qwen2.5-0.5b", 0.5, 128, 2, rep, 1500), "old", t_old));  // +50%
    old_rows.push_back(at(row("qwen2.5-0.5b", 0.5, 512, 1, rep, 800), "old", t_old));
    old_rows.push_back(at(row("qwen2.5-0.5b", 0.5, 512, 2, rep, 1200), "old", t_old));  // +50%, older build
    old_rows.push_back(at(row("qwen2.5-0.5b", 0.5, 2048, 1, rep, 400), "old", t_old));
    old_rows.push_back(at(row("qwen2.5-7b", 7.0, 128, 1, rep, 500), "old", t_old));
    old_rows.push_back(at(row("qwen2.5-7b", 7.0, 128, 2, rep, 400), "old", t_old));  // -20%
    new_rows.push_back(at(row("qwen2.5-0.5b", 0.5, 128, 1, rep, 2000), "new", t_new));
    new_rows.push_back(at(row("qwen2.5-0.5b", 0.5, 128, 2, rep, 1800), "new", t_new));  // -10%
    new_rows.push_back(at(row("qwen2.5-0.5b", 0.5, 2048, 2, rep, 800), "new", t_new));   // baseline: old build only
  }
  std::vector<ResultRow> all = old_rows;
  all.insert(all.end(), new_rows.begin(), new_rows.end());
  const std::vector<GainPoint> pts = gain_points(all);
  ASSERT_EQ(pts.size(), 2u);
  for (const GainPoint& p : pts) {
    if (p.shape == "qwen2.5-0.5b") {
      EXPECT_EQ(p.commit, "new");
      EXPECT_EQ(p.context, 128);
      EXPECT_NEAR(p.median, -0.10, 1e-12);
    } else {
      EXPECT_EQ(p.shape, "qwen2.5-7b");
      EXPECT_EQ(p.commit, "old");
      EXPECT_NEAR(p.median, -0.20, 1e-12);
    }
  }
  // The same through the binary, each study in its own file, the older one named last.
  auto write = [](const std::vector<ResultRow>& rows, const std::string& tag) {
    fs::path p = fs::temp_directory_path() / fmt::format("mpserve-advise-{}-{}.csv", tag, getpid());
    fs::remove(p);
    auto w = ResultsWriter::open(p);
    EXPECT_TRUE(w) << w.error();
    for (const ResultRow& r : rows) EXPECT_TRUE(w->append(r));
    return p;
  };
  const fs::path f_new = write(new_rows, "new"), f_old = write(old_rows, "old");
  auto r = run_mpserve("advise --results " + f_new.string() + " --results " + f_old.string() +
                       " --gpu 'NVIDIA Test GPU' --params-b 0.5 --context 128 --workload decode --json");
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["colocate"], false) << r.out;  // the old build's +50% would have said yes
  EXPECT_EQ(j["engines"], 1);
  fs::remove(f_new);
  fs::remove(f_old);
}

TEST(AdviseCli, answers_from_study_results_for_the_named_gpu) {
  const fs::path csv = write_fixture();
  auto r = run_mpserve("advise --results " + csv.string() +
                       " --gpu 'NVIDIA Test GPU' --params-b 0.5 --context 128 --workload decode --json");
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["colocate"], true);
  EXPECT_EQ(j["engines"], 2);
  EXPECT_NEAR(j["gain"].get<double>(), 0.5, 1e-9);
  EXPECT_EQ(j["basis"], "study");

  // Halfway (in log2) between 128 and 2048: +25%, whose lower bound still clears 10%.
  r = run_mpserve("advise --results " + csv.string() + " --gpu 'NVIDIA Test GPU' --params-b 0.5 --context 512");
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("co-locate: run 2 engines under MPS; expected throughput gain +25%"), std::string::npos)
      << r.out;

  r = run_mpserve("advise --results " + csv.string() + " --gpu 'NVIDIA Test GPU' --params-b 7 --context 128");
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("do not co-locate"), std::string::npos) << r.out;
  fs::remove(csv);
}

TEST(AdviseCli, unknown_gpu_and_bad_flags_are_clear_errors) {
  const fs::path csv = write_fixture();
  auto r = run_mpserve("advise --results " + csv.string() + " --gpu 'Other GPU' --params-b 0.5 --context 128");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("no decode measurement on 'Other GPU'"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("NVIDIA Test GPU"), std::string::npos) << r.err;
  EXPECT_NE(run_mpserve("advise --params-b 0.5").exit_code, 0);                        // --context is required
  EXPECT_NE(run_mpserve("advise --context 128 --workload sideways").exit_code, 0);     // unknown workload
  EXPECT_NE(run_mpserve("advise --context 128 --results /nonexistent.csv").exit_code, 0);
  fs::remove(csv);
}

TEST(AdviseCli, probe_measures_one_and_two_cpu_engines) {
  fs::path out = fs::temp_directory_path() / fmt::format("mpserve-advise-probe-test-{}", getpid());
  fs::remove_all(out);
  auto r = run_mpserve("advise --device cpu --context 32 --probe --probe-repeats 1 --probe-warmup 0.5 "
                       "--probe-window 1 --json --probe-out " + out.string());
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["basis"], "probe");
  ASSERT_EQ(j["estimates"].size(), 1u);
  EXPECT_EQ(j["estimates"][0]["engines"], 2);
  EXPECT_EQ(j["caveats"].back(), "these results come from CPU engines: they say nothing about MPS on a GPU");
  auto rows = load_results(out / "results.csv");
  ASSERT_TRUE(rows) << rows.error();
  ASSERT_EQ(rows->size(), 2u);  // 1 engine and 2 engines, one window each
  for (const ResultRow& row : *rows) {
    EXPECT_GT(row.throughput, 0);
    EXPECT_EQ(row.failed, 0);
    EXPECT_EQ(row.context, 32);
  }
  // The gain it reports is the one its rows give.
  const double g = (*rows)[1].throughput / (*rows)[0].throughput - 1;
  EXPECT_NEAR(j["estimates"][0]["gain"].get<double>(), g, 1e-9);
  fs::remove_all(out);
}

}  // namespace
}  // namespace mpserve::study
