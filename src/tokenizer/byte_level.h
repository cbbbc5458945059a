// GPT-2 byte-level alphabet: every byte 0..255 is written as one printable code point, so that
// byte-level BPE vocabularies are plain Unicode strings ("Ġthe" is " the").
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace mpserve::tokenizer {

// Code point that stands for `byte` in vocabulary strings.
char32_t byte_to_code_point(uint8_t byte);
// The UTF-8 encoding of byte_to_code_point(byte).
const std::string& byte_to_utf8(uint8_t byte);
// The byte a code point stands for, if it is one of the 256 alphabet code points.
std::optional<uint8_t> code_point_to_byte(char32_t cp);

// Raw bytes of a byte-level vocabulary string. Characters outside the alphabet (added tokens
// such as "<|im_start|>" are plain text) are kept as their own UTF-8, as HF's ByteLevel decoder does.
std::string byte_level_to_bytes(std::string_view token);
// The byte-level vocabulary string of raw bytes.
std::string bytes_to_byte_level(std::string_view bytes);

}  // namespace mpserve::tokenizer
