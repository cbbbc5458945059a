// libFuzzer target: parse_safetensors_header must never crash, hang or read out of bounds, and
// whatever it accepts must satisfy the invariants SafetensorsFile relies on.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "model/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view bytes(reinterpret_cast<const char*>(data), size);
  auto h = mpserve::model::parse_safetensors_header(bytes, "fuzz-input");
  if (!h.is_ok()) return 0;
  const uint64_t data_size = size - 8 - h->header_len;
  for (const auto& e : h->entries) {
    uint64_t numel = 1;
    for (int64_t d : e.shape) {
      if (d < 0) __builtin_trap();
      numel *= static_cast<uint64_t>(d);
    }
    if (e.begin > e.end || e.end > data_size) __builtin_trap();
    if (e.end - e.begin != numel * mpserve::model::dtype_size(e.dtype)) __builtin_trap();
    // Touch the first and last byte the view would cover: ASan catches any escape.
    if (e.end > e.begin) {
      volatile char first = bytes[8 + h->header_len + e.begin];
      volatile char last = bytes[8 + h->header_len + e.end - 1];
      (void)first;
      (void)last;
    }
  }
  return 0;
}
