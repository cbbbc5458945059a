// apply_chat_template renders the exact strings the models were trained on.
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "tokenizer/tokenizer.h"
#include "tokenizer_test_util.h"

namespace mpserve::tokenizer {
namespace {

std::string render(const std::string& kind, const std::vector<ChatMessage>& m, bool gen) {
  auto r = apply_chat_template(kind, m, gen);
  EXPECT_TRUE(r) << r.error();
  return r ? *r : std::string();
}

TEST(TokenizerChatTemplate, chatml_renders_each_message_and_the_generation_prompt) {
  const std::vector<ChatMessage> m = {{"system", "Be brief."}, {"user", "Hi!"}, {"assistant", "Hello."},
                                      {"user", "2+2?"}};
  EXPECT_EQ(render("chatml", m, true),
            "<|im_start|>system\nBe brief.<|im_end|>\n"
            "<|im_start|>user\nHi!<|im_end|>\n"
            "<|im_start|>assistant\nHello.<|im_end|>\n"
            "<|im_start|>user\n2+2?<|im_end|>\n"
            "<|im_start|>assistant\n");
  EXPECT_EQ(render("chatml", {{"user", "x"}}, false), "<|im_start|>user\nx<|im_end|>\n");
}

TEST(TokenizerChatTemplate, chatml_adds_no_default_system_message) {
  // Qwen3's template (the tokenizer_config.json mpserve ships) adds none; see chat_template.cpp.
  EXPECT_EQ(render("chatml", {{"user", "hi"}}, true), "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(render("chatml", {}, true), "<|im_start|>assistant\n");
}

TEST(TokenizerChatTemplate, chatml_wraps_consecutive_tool_results_in_one_user_turn) {
  EXPECT_EQ(render("chatml", {{"user", "weather?"}, {"tool", "sunny"}, {"tool", "20C"}, {"user", "thanks"}}, false),
            "<|im_start|>user\nweather?<|im_end|>\n"
            "<|im_start|>user\n<tool_response>\nsunny\n</tool_response>\n<tool_response>\n20C\n</tool_response>"
            "<|im_end|>\n"
            "<|im_start|>user\nthanks<|im_end|>\n");
}

TEST(TokenizerChatTemplate, llama3_uses_header_tokens_and_trims_content) {
  EXPECT_EQ(render("llama3", {{"system", "Be brief."}, {"user", "  Hi!\n"}}, true),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
  EXPECT_EQ(render("llama3", {{"user", "q"}, {"assistant", "a"}, {"tool", "{}"}}, false),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nq<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\na<|eot_id|>"
            "<|start_header_id|>ipython<|end_header_id|>\n\n{}<|eot_id|>");
}

TEST(TokenizerChatTemplate, unknown_role_or_kind_is_an_error) {
  auto r = apply_chat_template("chatml", {{"user", "a"}, {"wizard", "b"}}, true);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().find("messages[1]: unknown role \"wizard\""), std::string::npos) << r.error();
  EXPECT_FALSE(apply_chat_template("llama3", {{"", "b"}}, true));
  r = apply_chat_template("alpaca", {{"user", "a"}}, true);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().find("unknown chat template kind \"alpaca\""), std::string::npos) << r.error();
}

TEST(TokenizerChatTemplate, rendered_chatml_encodes_its_markers_as_special_tokens) {
  const Tokenizer* tok = testing::qwen();
  ASSERT_NE(tok, nullptr);
  const auto ids = tok->encode(render(tok->chat_template_kind(), {{"user", "hi"}}, true));
  EXPECT_EQ(ids, (std::vector<int32_t>{151644, 872, 198, 6023, 151645, 198, 151644, 77091, 198}));
}

}  // namespace
}  // namespace mpserve::tokenizer
