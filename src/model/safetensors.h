// Safetensors files: header parsing (fuzzed), mmap-backed tensor access, sharded checkpoints.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/file_util.h"
#include "common/status.h"
#include "model/tensor.h"

namespace mpserve::model {

struct SafetensorsEntry {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offset into the data section
  uint64_t end = 0;
};

struct SafetensorsHeader {
  uint64_t header_len = 0;  // bytes of JSON after the 8-byte length prefix
  std::vector<SafetensorsEntry> entries;
  std::map<std::string, std::string> metadata;
};

// Validates and parses the header of a safetensors file given the whole file's bytes: length
// prefix, JSON, dtypes, shapes, offsets in range, consistent with dtype*shape, and not
// overlapping. Never crashes on any input (fuzzed). `source` names the file in errors.
Result<SafetensorsHeader> parse_safetensors_header(std::string_view file_bytes, const std::string& source);

// One mapped .safetensors file.
class SafetensorsFile {
 public:
  static Result<std::unique_ptr<SafetensorsFile>> open(const std::filesystem::path& path);
  const std::string& path() const { return file_.path(); }
  const SafetensorsHeader& header() const { return header_; }
  // View of a tensor, or an error naming the file and tensor.
  Result<TensorView> tensor(const std::string& name) const;

 private:
  MappedFile file_;
  SafetensorsHeader header_;
  std::map<std::string, size_t> index_;
};

// All tensors of a model directory: model.safetensors, or shards listed in
// model.safetensors.index.json.
class TensorStore {
 public:
  static Result<std::unique_ptr<TensorStore>> open_dir(const std::filesystem::path& dir);
  bool contains(const std::string& name) const { return where_.count(name) != 0; }
  Result<TensorView> tensor(const std::string& name) const;
  std::vector<std::string> names() const;
  // Path of the file that holds `name` (for error messages); empty when absent.
  std::string file_of(const std::string& name) const;

 private:
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, size_t> where_;
};

// Serialises tensors into safetensors bytes (used by make-model and tests that build bad files).
struct TensorToWrite {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::string_view bytes;
};
// The 8-byte length prefix and the JSON header, padded with spaces to a multiple of 8 bytes, for
// tensors laid out back to back in the given order; sets each entry's begin/end. The data section
// follows directly (make-model streams it after this).
std::string safetensors_header_bytes(std::vector<SafetensorsEntry>* entries,
                                     const std::map<std::string, std::string>& metadata = {});
Status write_safetensors(const std::filesystem::path& path, const std::vector<TensorToWrite>& tensors,
                         const std::map<std::string, std::string>& metadata = {});

}  // namespace mpserve::model
