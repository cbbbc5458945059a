// tokenizer.json "normalizer": only NFC (Qwen2/2.5/3) and none (Llama 3) are supported.
#pragma once

#include <string>
#include <string_view>

namespace mpserve::tokenizer {

// Unicode NFC (utf8proc). Ill-formed UTF-8 bytes are passed through unchanged and break
// composition across them, so encode() never loses input bytes.
std::string nfc(std::string_view text);

}  // namespace mpserve::tokenizer
