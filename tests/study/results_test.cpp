// results.csv reading and writing, aggregation and gain arithmetic, and the planner's resume.
#include "study/results.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

#include "study/plan.h"

namespace mpserve::study {
namespace {

namespace fs = std::filesystem;

fs::path temp_dir(const std::string& name) {
  fs::path d = fs::temp_directory_path() / fmt::format("mpserve-study-test-{}-{}", getpid(), name);
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

ResultRow row(const std::string& shape, int context, const std::string& workload, int engines, const std::string& mps,
              const std::string& ablation, int repeat, double throughput) {
  ResultRow r;
  r.timestamp = "2025-01-01T00:00:00Z";
  r.gpu = "NVIDIA H200";
  r.driver = "580.1";
  r.cuda = "13.0";
  r.commit = "abc123";
  r.device = "cuda";
  r.shape = shape;
  r.params_b = 0.494;
  r.context = context;
  r.workload = workload;
  r.engines = engines;
  r.mps = mps;
  r.ablation = ablation;
  r.repeat = repeat;
  r.concurrency = 64;
  r.input_len = context;
  r.output_len = workload == "prefill" ? 1 : 256;
  r.warmup_s = 5;
  r.window_s = 15;
  r.completed = 100;
  r.throughput = throughput;
  (workload == "prefill" ? r.input_tok_s : r.output_tok_s) = throughput;
  return r;
}

TEST(StudyResults, csv_row_round_trips_with_quoted_fields) {
  ResultRow r = row("qwen2.5-0.5b", 128, "decode", 2, "on", "full", 1, 1234.5);
  r.gpu = "cpu (Intel(R) Xeon(R), \"2.2\" GHz)";
  r.step_cpu_us = 3000;
  r.async = 1;
  r.failed = 2;
  r.ttft_p50_ms = 12.25;
  r.tpot_p50_ms = 3.5;
  std::string line = format_result_row(r);
  auto back = parse_result_row(line);
  ASSERT_TRUE(back) << back.error();
  EXPECT_EQ(back->gpu, r.gpu);
  EXPECT_EQ(back->step_cpu_us, 3000);
  EXPECT_EQ(back->async, 1);
  EXPECT_EQ(back->failed, 2);
  EXPECT_DOUBLE_EQ(back->throughput, 1234.5);
  EXPECT_DOUBLE_EQ(back->ttft_p50_ms, 12.25);
  EXPECT_EQ(format_result_row(*back), line);
  EXPECT_EQ(measurement_key(*back), measurement_key(r));
}

TEST(StudyResults, writer_appends_after_header_and_loader_reads_every_row) {
  fs::path dir = temp_dir("csv");
  fs::path csv = dir / "results.csv";
  {
    auto w = ResultsWriter::open(csv);
    ASSERT_TRUE(w) << w.error();
    ASSERT_TRUE(w->append(row("qwen2.5-0.5b", 128, "decode", 1, "off", "full", 0, 100)));
    ASSERT_TRUE(w->append(row("qwen2.5-0.5b", 128, "decode", 2, "on", "full", 0, 150)));
  }
  {
    auto w = ResultsWriter::open(csv);  // reopened: no second header
    ASSERT_TRUE(w) << w.error();
    ASSERT_TRUE(w->append(row("qwen2.5-0.5b", 128, "prefill", 1, "off", "full", 0, 9000)));
  }
  std::ifstream in(csv);
  std::string first;
  std::getline(in, first);
  EXPECT_EQ(first, kResultsHeader);
  auto rows = load_results(csv);
  ASSERT_TRUE(rows) << rows.error();
  ASSERT_EQ(rows->size(), 3u);
  EXPECT_EQ((*rows)[1].engines, 2);
  EXPECT_DOUBLE_EQ((*rows)[2].throughput, 9000);
  fs::remove_all(dir);
}

TEST(StudyResults, loader_skips_a_cut_short_last_line_and_rejects_a_foreign_header) {
  fs::path dir = temp_dir("cut");
  fs::path csv = dir / "results.csv";
  std::string full = format_result_row(row("tiny", 32, "decode", 1, "off", "full", 0, 10));
  {
    std::ofstream out(csv);
    out << kResultsHeader << "\n" << full << "\n" << full.substr(0, 30);
  }
  auto rows = load_results(csv);
  ASSERT_TRUE(rows) << rows.error();
  EXPECT_EQ(rows->size(), 1u);
  // The writer drops the fragment so the next row starts on its own line.
  auto w = ResultsWriter::open(csv);
  ASSERT_TRUE(w) << w.error();
  ASSERT_TRUE(w->append(row("tiny", 32, "decode", 1, "off", "full", 1, 11)));
  rows = load_results(csv);
  ASSERT_TRUE(rows) << rows.error();
  EXPECT_EQ(rows->size(), 2u);

  {
    std::ofstream out(csv);
    out << "a,b,c\n1,2,3\n";
  }
  EXPECT_FALSE(load_results(csv));
  EXPECT_FALSE(ResultsWriter::open(csv));
  EXPECT_TRUE(load_results(dir / "missing.csv"));
  fs::remove_all(dir);
}

TEST(StudyResults, spread_is_median_min_max) {
  Spread s = spread_of({110, 90, 100});
  EXPECT_EQ(s.n, 3);
  EXPECT_DOUBLE_EQ(s.median, 100);
  EXPECT_DOUBLE_EQ(s.min, 90);
  EXPECT_DOUBLE_EQ(s.max, 110);
  EXPECT_DOUBLE_EQ(spread_of({1, 2, 3, 10}).median, 2.5);
  EXPECT_EQ(spread_of({}).n, 0);
}

TEST(StudyResults, gain_is_median_ratio_minus_one_with_worst_and_best_pairing) {
  std::vector<ResultRow> rows;
  int rep = 0;
  for (double t : {90.0, 100.0, 110.0}) rows.push_back(row("qwen2.5-0.5b", 128, "decode", 1, "off", "full", rep++, t));
  rep = 0;
  for (double t : {140.0, 150.0, 160.0}) rows.push_back(row("qwen2.5-0.5b", 128, "decode", 2, "on", "full", rep++, t));
  auto cells = summarize(rows);
  ASSERT_EQ(cells.size(), 2u);
  const CellSummary* base = find_baseline(cells, cells[1]);
  ASSERT_EQ(base, &cells[0]);  // MPS off baseline for an MPS-on cell
  auto g = gain_of(cells[1], *base);
  ASSERT_TRUE(g);
  EXPECT_DOUBLE_EQ(g->median, 0.5);
  EXPECT_DOUBLE_EQ(g->min, 140.0 / 110.0 - 1);
  EXPECT_DOUBLE_EQ(g->max, 160.0 / 90.0 - 1);
  // A different context has no baseline.
  std::vector<ResultRow> other{row("qwen2.5-0.5b", 256, "decode", 2, "on", "full", 0, 1)};
  auto other_cells = summarize(other);
  EXPECT_EQ(find_baseline(cells, other_cells[0]), nullptr);
}

TEST(StudyResults, a_re_measured_repeat_counts_once_with_the_later_value) {
  std::vector<ResultRow> rows{row("tiny", 32, "decode", 1, "off", "full", 0, 10),
                              row("tiny", 32, "decode", 1, "off", "full", 0, 30)};
  auto cells = summarize(rows);
  ASSERT_EQ(cells.size(), 1u);
  EXPECT_EQ(cells[0].throughput.n, 1);
  EXPECT_DOUBLE_EQ(cells[0].throughput.median, 30);
}

TEST(StudyResults, expected_gain_weights_ablation_gains_by_step_time_share) {
  // t_attn = 1/300, t_mlp = 1/600: attention takes 2/3 of the step.
  ExpectedGain e = expected_gain(300, 600, 0.9, 0.3);
  EXPECT_NEAR(e.w_attn, 2.0 / 3.0, 1e-12);
  EXPECT_NEAR(e.expected, 0.7, 1e-12);

  std::vector<ResultRow> rows{row("qwen2.5-0.5b", 128, "decode", 1, "off", "attention", 0, 300),
                              row("qwen2.5-0.5b", 128, "decode", 2, "on", "attention", 0, 570),
                              row("qwen2.5-0.5b", 128, "decode", 1, "off", "mlp", 0, 600),
                              row("qwen2.5-0.5b", 128, "decode", 2, "on", "mlp", 0, 780),
                              row("qwen2.5-0.5b", 128, "decode", 1, "off", "full", 0, 200),
                              row("qwen2.5-0.5b", 128, "decode", 2, "on", "full", 0, 300)};
  auto cells = summarize(rows);
  auto e2 = expected_gain_for(cells, cells[5]);
  ASSERT_TRUE(e2);
  EXPECT_NEAR(e2->gain_attn, 0.9, 1e-12);
  EXPECT_NEAR(e2->gain_mlp, 0.3, 1e-12);
  EXPECT_NEAR(e2->expected, 0.7, 1e-12);
  rows.erase(rows.begin() + 3);  // no 2-engine MLP-only cell: nothing to expect
  cells = summarize(rows);
  EXPECT_FALSE(expected_gain_for(cells, cells[4]));
}

StudyOptions cpu_options() {
  StudyFlags f;
  f.device = "cpu";
  f.out_dir = "/nonexistent/out";
  f.models_dir = "/nonexistent/models";
  f.quick = true;
  auto o = resolve_options(f, false);
  EXPECT_TRUE(o) << o.error();
  return *o;
}

MachineInfo cpu_machine() {
  MachineInfo m;
  m.device = "cpu";
  m.gpu = "cpu (test)";
  m.driver = m.cuda = "none";
  m.commit = "abc";
  m.cpu_cores = 2;
  return m;
}

TEST(StudyPlan, quick_cpu_plan_is_tiny_two_contexts_both_workloads_engines_1_and_2) {
  StudyOptions o = cpu_options();
  auto plan = make_plan(o, cpu_machine(), {}, {});
  ASSERT_TRUE(plan) << plan.error();
  ASSERT_EQ(plan->groups.size(), 2u);
  EXPECT_EQ(plan->groups[0].server.engines, 1);
  EXPECT_EQ(plan->groups[1].server.engines, 2);
  EXPECT_EQ(plan->groups[1].server.mps, "off");
  EXPECT_EQ(plan->cells_total, 8);  // 2 contexts x 2 workloads x 2 configurations x 1 repeat
  EXPECT_EQ(plan->cells_todo, 8);
  EXPECT_EQ(plan->servers_to_start, 2);
  EXPECT_EQ(plan->groups[0].server.max_model_len, 128 + 16 + 16);
  for (const Cell& c : plan->groups[0].cells) {
    EXPECT_EQ(c.row.shape, "tiny");
    EXPECT_EQ(c.row.input_len, c.row.context);
    EXPECT_EQ(c.row.output_len, c.row.workload == "prefill" ? 1 : 16);
  }
}

TEST(StudyPlan, resume_skips_measured_cells_and_configurations_with_nothing_left) {
  StudyOptions o = cpu_options();
  MachineInfo m = cpu_machine();
  auto first = make_plan(o, m, {}, {});
  ASSERT_TRUE(first);
  std::set<std::string> measured;
  for (const Cell& c : first->groups[0].cells) measured.insert(measurement_key(c.row));  // all of 1 engine
  measured.insert(measurement_key(first->groups[1].cells[0].row));                      // one of 2 engines
  auto second = make_plan(o, m, measured, {});
  ASSERT_TRUE(second);
  EXPECT_EQ(second->groups[0].todo(), 0);
  EXPECT_EQ(second->groups[1].todo(), 3);
  EXPECT_TRUE(second->groups[1].cells[0].measured);
  EXPECT_EQ(second->cells_todo, 3);
  EXPECT_EQ(second->servers_to_start, 1);
  // The same cells measured on another GPU do not count.
  m.gpu = "cpu (other)";
  auto other = make_plan(o, m, measured, {});
  ASSERT_TRUE(other);
  EXPECT_EQ(other->cells_todo, 8);
}

TEST(StudyPlan, cpu_overhead_experiment_adds_three_configurations) {
  StudyFlags f;
  f.device = "cpu";
  f.out_dir = "/x";
  f.models_dir = "/m";
  f.quick = true;
  f.cpu_overhead = true;
  f.step_cpu_us = 500;
  auto o = resolve_options(f, false);
  ASSERT_TRUE(o) << o.error();
  auto plan = make_plan(*o, cpu_machine(), {}, {});
  ASSERT_TRUE(plan);
  ASSERT_EQ(plan->groups.size(), 5u);
  const ServerConfig& one = plan->groups[2].server;
  const ServerConfig& async = plan->groups[3].server;
  const ServerConfig& two = plan->groups[4].server;
  EXPECT_EQ(one.engines, 1);
  EXPECT_EQ(one.async, 0);
  EXPECT_EQ(one.step_cpu_us, 500);
  EXPECT_EQ(async.async, 1);
  EXPECT_EQ(two.engines, 2);
  EXPECT_EQ(two.async, 0);
  EXPECT_EQ(plan->groups[4].cells.size(), 1u);
  EXPECT_EQ(plan->groups[4].cells[0].row.workload, "decode");
}

TEST(StudyPlan, bad_values_are_usage_errors) {
  auto resolve = [](auto edit) {
    StudyFlags f;
    f.device = "cpu";
    f.out_dir = "/x";
    f.models_dir = "/m";
    edit(f);
    return resolve_options(f, false);
  };
  EXPECT_FALSE(resolve([](StudyFlags& f) { f.shapes = "qwen9-1t"; }));
  EXPECT_FALSE(resolve([](StudyFlags& f) { f.contexts = "128,0"; }));
  EXPECT_FALSE(resolve([](StudyFlags& f) { f.repeats = 0; }));
  EXPECT_FALSE(resolve([](StudyFlags& f) { f.mps = "on"; }));  // MPS needs a GPU
  EXPECT_FALSE(resolve([](StudyFlags& f) { f.concurrency = "decode=x"; }));
  auto ok = resolve([](StudyFlags& f) {
    f.shapes = "0.5b,tiny";
    f.engines = "4,2";
    f.concurrency = "prefill=3";
  });
  ASSERT_TRUE(ok) << ok.error();
  EXPECT_EQ(ok->shapes, (std::vector<std::string>{"qwen2.5-0.5b", "tiny"}));
  EXPECT_EQ(ok->engines, (std::vector<int>{1, 2, 4}));
  EXPECT_EQ(ok->prefill_concurrency, 3);
  EXPECT_EQ(ok->decode_concurrency, 8);
}

}  // namespace
}  // namespace mpserve::study
