// File helpers shared by modules: whole-file reads, atomic writes, read-only mmap.
#pragma once

#include <cstddef>
#include <filesystem>
#include <string>
#include <string_view>

#include "common/status.h"

namespace mpserve {

Result<std::string> read_file(const std::filesystem::path& path);
// Writes to a temporary file beside `path`, then renames it, so readers never see a partial file.
Status write_file_atomic(const std::filesystem::path& path, std::string_view contents);

// A read-only memory map of a whole file. Movable, not copyable.
class MappedFile {
 public:
  MappedFile() = default;
  ~MappedFile();
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  static Result<MappedFile> open(const std::filesystem::path& path);

  const unsigned char* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  const unsigned char* data_ = nullptr;
  size_t size_ = 0;
  std::string path_;
};

}  // namespace mpserve
