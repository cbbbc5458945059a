// Element types and non-owning views of tensors as stored in model files.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace mpserve::model {

enum class DType { kF32, kF16, kBF16 };

inline size_t dtype_size(DType t) { return t == DType::kF32 ? 4 : 2; }
// Safetensors spelling: "F32", "F16", "BF16".
std::string_view dtype_name(DType t);

// A read-only view of one tensor's bytes (row-major, as stored). The bytes live in a mapped
// file owned by a TensorStore that must outlive the view.
struct TensorView {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  size_t nbytes = 0;

  bool empty() const { return data == nullptr; }
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  int64_t dim(int i) const { return shape.at(static_cast<size_t>(i)); }
  // "[896, 4864]"
  std::string shape_string() const;
};

}  // namespace mpserve::model
