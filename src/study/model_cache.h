// Random-weight models for the study (make-model shapes, seed 0), made once per models dir and
// reused by later runs.
#pragma once

#include <filesystem>
#include <string>

#include "common/status.h"

namespace mpserve::study {

// <models_dir>/<shape>-seed0; true when it holds a complete model.
std::filesystem::path study_model_dir(const std::filesystem::path& models_dir, const std::string& shape);
bool study_model_cached(const std::filesystem::path& models_dir, const std::string& shape);

// The model directory of `shape`, written first when missing. The writer fills a temporary
// directory and renames it, so a killed study never leaves a half-written model to be reused.
Result<std::filesystem::path> ensure_study_model(const std::filesystem::path& models_dir, const std::string& shape);

}  // namespace mpserve::study
