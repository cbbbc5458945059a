// The `tiny` shape as `mpserve make-model --shape tiny --seed 0` writes it (the embedded default
// model), made once per test process in a temporary directory and loaded from there.
#pragma once

#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <memory>
#include <string>

#include "backend/cuda/kernel_test_api.h"
#include "model/model_writer.h"
#include "model/weights.h"

namespace mpserve::cuda_test {

// Null (with `error` set) when the tokenizer files that make-model copies are not found.
inline const model::ModelWeights* tiny_model(std::string* error) {
  static std::unique_ptr<model::ModelWeights> weights;
  static std::string err;
  static bool tried = false;
  if (!tried) {
    tried = true;
    model::MakeModelOptions o;
    o.shape = "tiny";
    o.seed = 0;
    o.out_dir = std::filesystem::temp_directory_path() / ("mpserve-test-tiny-" + std::to_string(::getpid()));
    if (Status s = model::make_model(o); !s.is_ok()) {
      err = s.message();
    } else if (auto w = model::load_model(o.out_dir); w.is_ok()) {
      weights = std::move(w).value();
    } else {
      err = w.error();
    }
  }
  if (error) *error = err;
  return weights.get();
}

// A test on the tiny model that needs a GPU: skipped where there is none, failed where the
// model cannot be made.
class TinyModelGpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!backend::cuda::test_api::gpu_available()) GTEST_SKIP() << "no CUDA device";
    std::string err;
    w_ = tiny_model(&err);
    ASSERT_NE(w_, nullptr) << "make-model tiny: " << err;
  }
  const model::ModelWeights* w_ = nullptr;
};

}  // namespace mpserve::cuda_test
