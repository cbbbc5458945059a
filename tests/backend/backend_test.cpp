// The backend factory and option parsers.
#include "backend/backend.h"

#include <gtest/gtest.h>

#include "backend/test_model.h"

namespace mpserve::backend {
namespace {

TEST(BackendOptions, parse_device_accepts_cpu_and_cuda_and_lists_choices_otherwise) {
  ASSERT_TRUE(parse_device("cpu").is_ok());
  EXPECT_EQ(*parse_device("cpu"), Device::kCpu);
  ASSERT_TRUE(parse_device("cuda").is_ok());
  EXPECT_EQ(*parse_device("cuda"), Device::kCuda);
  for (const char* bad : {"gpu", "", "CPU", "cuda:0"}) {
    auto r = parse_device(bad);
    ASSERT_FALSE(r.is_ok()) << bad;
    EXPECT_NE(r.error().find("cpu, cuda"), std::string::npos) << r.error();
  }
}

TEST(BackendOptions, parse_ablation_round_trips_through_ablation_name) {
  for (Ablation a : {Ablation::kNone, Ablation::kNoAttention, Ablation::kNoMlp}) {
    auto r = parse_ablation(ablation_name(a));
    ASSERT_TRUE(r.is_ok()) << r.error();
    EXPECT_EQ(*r, a);
  }
  EXPECT_EQ(ablation_name(Ablation::kNoAttention), "attention");
  auto bad = parse_ablation("both");
  ASSERT_FALSE(bad.is_ok());
  EXPECT_NE(bad.error().find("none, attention, mlp"), std::string::npos) << bad.error();
}

TEST(MakeBackend, cpu_device_gives_the_cpu_backend) {
  auto m = testing::make_test_model(testing::TestModelSpec{});
  BackendOptions o;
  o.max_model_len = 128;
  o.max_num_batched_tokens = 128;
  o.num_threads = 1;
  auto r = make_backend(m->weights, o);
  ASSERT_TRUE(r.is_ok()) << r.error();
  EXPECT_EQ((*r)->name(), "cpu");
}

TEST(MakeBackend, cuda_device_in_a_build_without_cuda_is_a_clear_error) {
  if (cuda_compiled()) GTEST_SKIP() << "this build has the CUDA backend";
  auto m = testing::make_test_model(testing::TestModelSpec{});
  BackendOptions o;
  o.device = Device::kCuda;
  auto r = make_backend(m->weights, o);
  ASSERT_FALSE(r.is_ok());
  EXPECT_NE(r.error().find("built without CUDA"), std::string::npos) << r.error();
  EXPECT_NE(r.error().find("--device cpu"), std::string::npos) << r.error();
}

}  // namespace
}  // namespace mpserve::backend
