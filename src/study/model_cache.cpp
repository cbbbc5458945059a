#include "study/model_cache.h"

#include <unistd.h>

#include <chrono>

#include <fmt/format.h>

#include "common/log.h"
#include "model/model_writer.h"

namespace mpserve::study {

namespace fs = std::filesystem;

fs::path study_model_dir(const fs::path& models_dir, const std::string& shape) {
  return models_dir / (shape + "-seed0");
}

bool study_model_cached(const fs::path& models_dir, const std::string& shape) {
  fs::path d = study_model_dir(models_dir, shape);
  return fs::exists(d / "config.json") && fs::exists(d / "model.safetensors") && fs::exists(d / "tokenizer.json");
}

Result<fs::path> ensure_study_model(const fs::path& models_dir, const std::string& shape) {
  fs::path dir = study_model_dir(models_dir, shape);
  if (study_model_cached(models_dir, shape)) return dir;
  std::error_code ec;
  fs::create_directories(models_dir, ec);
  if (ec) return Status::errorf("cannot create models dir {}: {}", models_dir.string(), ec.message());
  model::MakeModelOptions o;
  o.shape = shape;
  o.seed = 0;
  o.out_dir = models_dir / fmt::format(".{}-seed0.partial-{}", shape, getpid());
  MPS_ASSIGN_OR_RETURN(o.tokenizer_source_dir, model::find_tokenizer_source_dir());
  fs::remove_all(o.out_dir, ec);
  log::info("study: making model {} in {} (random weights, seed 0)", shape, dir.string());
  auto t0 = std::chrono::steady_clock::now();
  Status st = model::make_model(o);
  if (!st) {
    fs::remove_all(o.out_dir, ec);
    return st.with_context("make-model " + shape);
  }
  fs::remove_all(dir, ec);  // an incomplete directory from an older writer
  fs::rename(o.out_dir, dir, ec);
  if (ec) return Status::errorf("cannot rename {} to {}: {}", o.out_dir.string(), dir.string(), ec.message());
  log::info("study: model {} made in {:.1f} s", shape,
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  return dir;
}

}  // namespace mpserve::study
