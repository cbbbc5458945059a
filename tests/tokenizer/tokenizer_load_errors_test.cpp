// Malformed tokenizer files give a Status naming the file, never a crash or an exception.
#include <filesystem>
#include <fstream>
#include <string>

#include <gtest/gtest.h>
#include <unistd.h>

#include "tokenizer/tokenizer.h"
#include "tokenizer_test_json.h"

namespace mpserve::tokenizer {
namespace {

using testing::tiny_tokenizer_json;

// Expects loading to fail with a message that names the file and contains `what`.
void expect_error(const std::string& json, const std::string& what, const std::string& config = "") {
  const auto r = Tokenizer::from_json(json, config, "/models/x/tokenizer.json");
  ASSERT_FALSE(r) << "loaded but should not have: " << json.substr(0, 200);
  EXPECT_NE(r.error().find("/models/x/tokenizer"), std::string::npos) << r.error();
  EXPECT_NE(r.error().find(what), std::string::npos) << r.error();
}

TEST(TokenizerLoadErrors, bad_json_is_reported_with_the_file_name) {
  expect_error("{\"model\": ", "not valid JSON");
  expect_error("", "not valid JSON");
  expect_error("[1, 2]", "not a JSON object");
}

TEST(TokenizerLoadErrors, missing_model_vocab_or_merges) {
  auto j = tiny_tokenizer_json({}, {});
  j.erase("model");
  expect_error(j.dump(), "\"model\" is missing");
  j = tiny_tokenizer_json({}, {});
  j["model"].erase("vocab");
  expect_error(j.dump(), "model.vocab");
  j = tiny_tokenizer_json({}, {});
  j["model"].erase("merges");
  expect_error(j.dump(), "model.merges");
  j = tiny_tokenizer_json({}, {});
  j["model"]["vocab"] = {{"a", "not a number"}};
  expect_error(j.dump(), "invalid id");
  j = tiny_tokenizer_json({}, {});
  j["model"]["vocab"]["x"] = -3;
  expect_error(j.dump(), "invalid id");
}

TEST(TokenizerLoadErrors, unknown_model_type) {
  auto j = tiny_tokenizer_json({}, {});
  j["model"]["type"] = "WordPiece";
  expect_error(j.dump(), "unsupported model type \"WordPiece\"");
  j["model"]["type"] = "BPE";
  j["model"]["byte_fallback"] = true;
  expect_error(j.dump(), "byte_fallback");
}

TEST(TokenizerLoadErrors, merges_referencing_unknown_tokens) {
  // "q" + "z" joins to "qz", which the vocabulary lacks.
  expect_error(tiny_tokenizer_json({}, {{"q", "z"}}).dump(), "\"qz\" that is not in model.vocab");
  auto j = tiny_tokenizer_json({}, {});
  j["model"]["merges"] = nlohmann::json::array({nlohmann::json::array({"nope", "a"})});
  expect_error(j.dump(), "\"nope\"");
  j["model"]["merges"] = nlohmann::json::array({"a b c"});
  expect_error(j.dump(), "not two tokens");
  j["model"]["merges"] = nlohmann::json::array({42});
  expect_error(j.dump(), "not two tokens");
}

TEST(TokenizerLoadErrors, unsupported_or_broken_pipeline_parts) {
  auto j = tiny_tokenizer_json({}, {});
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(unclosed";
  expect_error(j.dump(), "cannot compile pre_tokenizer pattern");
  j = tiny_tokenizer_json({}, {});
  j["pre_tokenizer"] = {{"type", "Metaspace"}};
  expect_error(j.dump(), "unsupported pre_tokenizer type \"Metaspace\"");
  j = tiny_tokenizer_json({}, {});
  j["normalizer"] = {{"type", "NFKC"}};
  expect_error(j.dump(), "unsupported normalizer");
  j = tiny_tokenizer_json({}, {});
  j["decoder"] = {{"type", "WordPiece"}};
  expect_error(j.dump(), "unsupported decoder");
  j = tiny_tokenizer_json({}, {});
  j["added_tokens"] = {{{"content", "<x>"}}};
  expect_error(j.dump(), "added_tokens[0]");
  j = tiny_tokenizer_json({}, {});
  j["model"]["ignore_merges"] = "yes";  // wrong JSON type deep inside
  expect_error(j.dump(), "");
}

TEST(TokenizerLoadErrors, bad_tokenizer_config_names_tokenizer_config_json) {
  const std::string json = tiny_tokenizer_json({}, {}).dump();
  const auto check = [&](const std::string& config, const std::string& what) {
    const auto r = Tokenizer::from_json(json, config, "/models/x/tokenizer.json");
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().find("/models/x/tokenizer_config.json"), std::string::npos) << r.error();
    EXPECT_NE(r.error().find(what), std::string::npos) << r.error();
  };
  check("{oops", "not a valid JSON object");
  check(R"({"eos_token": "<|not_there|>"})", "eos_token \"<|not_there|>\" is not a token");
  check(R"({"bos_token": 5})", "bos_token must be a string");
  check(R"({"eos_token": {"special": true}})", "without \"content\"");
}

TEST(TokenizerLoadErrors, load_from_a_directory_without_files) {
  const auto dir = std::filesystem::temp_directory_path() / ("mpserve_tok_missing_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  auto r = Tokenizer::load(dir);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().find((dir / "tokenizer.json").string()), std::string::npos) << r.error();
  // tokenizer_config.json is optional.
  std::ofstream(dir / "tokenizer.json") << tiny_tokenizer_json({}, {}).dump();
  r = Tokenizer::load(dir);
  ASSERT_TRUE(r) << r.error();
  EXPECT_EQ((*r)->eos_token_id(), std::nullopt);
  EXPECT_EQ((*r)->chat_template_kind(), "chatml");
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace mpserve::tokenizer
