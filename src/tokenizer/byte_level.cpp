// GPT-2's bytes_to_unicode table: printable Latin-1 bytes map to themselves, the other 68 bytes
// to U+0100 and up, in byte order.
#include "tokenizer/byte_level.h"


namespace mpserve::tokenizer {
namespace {

void append_utf8(std::string* out, char32_t cp) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

struct Tables {
  std::array<char32_t, 256> code_point{};
  std::array<std::string, 256> utf8;
  // Inverse map over U+0000..U+0143 (the largest alphabet code point is U+0143); -1 = not in it.
  std::array<int16_t, 0x144> byte_of{};

  Tables() {
    byte_of.fill(-1);
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      code_point[b] = printable ? static_cast<char32_t>(b) : next++;
      append_utf8(&utf8[b], code_point[b]);
      byte_of[code_point[b]] = static_cast<int16_t>(b);
    }
  }
};

const Tables& tables() {
  static const Tables t;
  return t;
}

}  // namespace

char32_t byte_to_code_point(uint8_t byte) { return tables().code_point[byte]; }

const std::string& byte_to_utf8(uint8_t byte) { return tables().utf8[byte]; }

std::optional<uint8_t> code_point_to_byte(char32_t cp) {
  const Tables& t = tables();
  if (cp >= t.byte_of.size() || t.byte_of[cp] < 0) return std::nullopt;
  return static_cast<uint8_t>(t.byte_of[cp]);
}

std::string byte_level_to_bytes(std::string_view token) {
  std::string out;
  out.reserve(token.size());
  size_t i = 0;
  while (i < token.size()) {
    const unsigned char c = static_cast<unsigned char>(token[i]);
    // Vocabulary strings come from parsed JSON, so they are well-formed UTF-8.
    const size_t len = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
    if (i + len > token.size()) {
      out.append(token.substr(i));
      break;
    }
    char32_t cp = len == 1 ? c : len == 2 ? (c & 0x1F) : len == 3 ? (c & 0x0F) : (c & 0x07);
    for (size_t k = 1; k < len; ++k) cp = (cp << 6) | (static_cast<unsigned char>(token[i + k]) & 0x3F);
    if (auto b = code_point_to_byte(cp)) {
      out.push_back(static_cast<char>(*b));
    } else {
      out.append(token.substr(i, len));
    }
    i += len;
  }
  return out;
}

std::string bytes_to_byte_level(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (char c : bytes) out += byte_to_utf8(static_cast<uint8_t>(c));
  return out;
}

}  // namespace mpserve::tokenizer
