// The advisor's interpolation and decision on hand-made study points (exact arithmetic).
#include "study/advisor.h"

#include <cmath>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace mpserve::study {
namespace {

GainPoint pt(double params_b, int context, double median, double lo, double hi, int engines = 2,
             const std::string& workload = "decode", const std::string& gpu = "NVIDIA H200") {
  GainPoint p;
  p.gpu = gpu;
  p.shape = "qwen2.5-test-shape";
  p.params_b = params_b;
  p.context = context;
  p.workload = workload;
  p.engines = engines;
  p.median = median;
  p.lo = lo;
  p.hi = hi;
  return p;
}

AdviceQuery query(double params_b, int context, const std::string& workload = "decode") {
  AdviceQuery q;
  q.gpu = "NVIDIA H200";
  q.params_b = params_b;
  q.context = context;
  q.workload = workload;
  return q;
}

const std::vector<GainPoint> kStudy = {
    pt(0.5, 128, 0.60, 0.50, 0.70), pt(0.5, 2048, 0.10, 0.05, 0.15),  //
    pt(7.0, 128, 0.04, 0.00, 0.08), pt(7.0, 2048, 0.00, -0.02, 0.02),  //
    pt(0.5, 128, 1.20, 1.10, 1.30, 2, "prefill"),                      //
    pt(0.5, 128, 0.55, 0.45, 0.60, 3),                                 // 3 engines: not clearly better
};

TEST(Advisor, MeasuredCellIsReturnedExactly) {
  auto a = advise_from_study(kStudy, query(0.5, 128));
  ASSERT_TRUE(a) << a.error();
  EXPECT_TRUE(a->colocate);
  EXPECT_EQ(a->engines, 2);  // 3 engines' 0.55 is not 5 points better than 0.60
  EXPECT_DOUBLE_EQ(a->gain, 0.60);
  EXPECT_DOUBLE_EQ(a->lo, 0.50);
  EXPECT_DOUBLE_EQ(a->hi, 0.70);
  EXPECT_TRUE(a->caveats.empty()) << a->caveats.front();
  ASSERT_EQ(a->estimates.size(), 2u);
  EXPECT_EQ(a->estimates[1].engines, 3);
  EXPECT_EQ(a->basis, "study");
}

TEST(Advisor, InterpolatesInLogContext) {
  // 512 is halfway between 128 and 2048 in log2: (0.60 + 0.10) / 2.
  auto a = advise_from_study(kStudy, query(0.5, 512));
  ASSERT_TRUE(a) << a.error();
  EXPECT_NEAR(a->gain, 0.35, 1e-12);
  EXPECT_NEAR(a->lo, 0.275, 1e-12);
  EXPECT_NEAR(a->hi, 0.425, 1e-12);
  EXPECT_TRUE(a->colocate);
  // 3 engines were measured only at 128 tokens: not extrapolated to 512.
  ASSERT_EQ(a->estimates.size(), 1u);
  ASSERT_EQ(a->caveats.size(), 1u);
  EXPECT_NE(a->caveats[0].find("3 engines were not measured near this query"), std::string::npos);
}

TEST(Advisor, InterpolatesInLogModelSize) {
  // The geometric mean of 0.5B and 7B is halfway in log size: (0.60 + 0.04) / 2 at context 128.
  auto a = advise_from_study(kStudy, query(std::sqrt(0.5 * 7.0), 128));
  ASSERT_TRUE(a) << a.error();
  EXPECT_NEAR(a->estimates[0].gain, 0.32, 1e-12);
  EXPECT_NEAR(a->estimates[0].lo, 0.25, 1e-12);
}

TEST(Advisor, OutsideTheMeasuredRangeUsesTheNearestPointAndSaysSo) {
  auto a = advise_from_study(kStudy, query(0.5, 8192));
  ASSERT_TRUE(a) << a.error();
  EXPECT_DOUBLE_EQ(a->gain, 0.0);  // one engine recommended
  EXPECT_DOUBLE_EQ(a->estimates.at(0).gain, 0.10);
  EXPECT_FALSE(a->colocate);  // lower bound 0.05 < 0.10
  // 2 engines: nearest measurement 2 octaves away (2048); 3 engines: 6 octaves (128) → left out.
  ASSERT_EQ(a->estimates.size(), 1u);
  ASSERT_EQ(a->caveats.size(), 2u);
  EXPECT_NE(a->caveats[0].find("context 8192 is outside the measured 128–2048"), std::string::npos) << a->caveats[0];
  EXPECT_NE(a->caveats[1].find("3 engines were not measured near"), std::string::npos) << a->caveats[1];
  EXPECT_NE(a->verdict.find("--probe"), std::string::npos) << a->verdict;
}

TEST(Advisor, LargeModelIsNotCoLocated) {
  auto a = advise_from_study(kStudy, query(7.0, 1024));
  ASSERT_TRUE(a) << a.error();
  EXPECT_FALSE(a->colocate);
  EXPECT_EQ(a->engines, 1);
  EXPECT_NE(a->verdict.find("do not co-locate"), std::string::npos);
}

TEST(Advisor, WorkloadsAreSeparate) {
  auto a = advise_from_study(kStudy, query(0.5, 128, "prefill"));
  ASSERT_TRUE(a) << a.error();
  EXPECT_DOUBLE_EQ(a->gain, 1.20);
  ASSERT_EQ(a->estimates.size(), 1u);
}

TEST(Advisor, UnknownGpuIsAClearError) {
  AdviceQuery q = query(0.5, 128);
  q.gpu = "NVIDIA H100 80GB HBM3";
  auto a = advise_from_study(kStudy, q);
  ASSERT_FALSE(a);
  EXPECT_NE(a.error().find("NVIDIA H200"), std::string::npos) << a.error();
  EXPECT_NE(a.error().find("--probe"), std::string::npos) << a.error();
}

TEST(Advisor, BadQueryIsAnError) {
  EXPECT_FALSE(advise_from_study(kStudy, query(0.5, 0)));
  EXPECT_FALSE(advise_from_study(kStudy, query(0, 128)));
}

TEST(Advisor, MoreEnginesOnlyWhenClearlyBetter) {
  Advice a = decide({{2, 0.30, 0.20, 0.40, ""}, {3, 0.40, 0.25, 0.50, ""}, {4, 0.42, 0.10, 0.60, ""}}, 0.10, "probe");
  EXPECT_TRUE(a.colocate);
  EXPECT_EQ(a.engines, 3);  // 10 points over 2 engines; 4 engines adds only 2 more
  EXPECT_DOUBLE_EQ(a.gain, 0.40);
  Advice none = decide({{2, -0.05, -0.10, 0.0, ""}}, 0.10, "probe");
  EXPECT_FALSE(none.colocate);
  EXPECT_EQ(none.engines, 1);
}

TEST(Advisor, CpuResultsCarryTheMpsCaveat) {
  std::vector<GainPoint> pts = {pt(0.001, 64, 0.2, 0.1, 0.3, 2, "decode", "cpu (test)")};
  AdviceQuery q = query(0.001, 64);
  q.gpu = "cpu (test)";
  auto a = advise_from_study(pts, q);
  ASSERT_TRUE(a) << a.error();
  ASSERT_FALSE(a->caveats.empty());
  EXPECT_NE(a->caveats.back().find("say nothing about MPS"), std::string::npos);
  EXPECT_EQ(a->verdict.find("MPS"), std::string::npos) << a->verdict;
  auto j = nlohmann::json::parse(advice_json(*a, q));
  EXPECT_EQ(j["engines"], 2);
  EXPECT_EQ(j["query"]["context"], 64);
}

}  // namespace
}  // namespace mpserve::study
