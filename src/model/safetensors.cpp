// Safetensors format: validated header parsing, mmap-backed files, and the writer.
//
// Layout: u64 little-endian N, then N bytes of JSON header, then the data section. Each header
// entry is {"dtype", "shape", "data_offsets": [begin, end]} with offsets relative to the data
// section; "__metadata__" is an optional string -> string map.
#include "model/safetensors.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <limits>
#include <set>

#include <nlohmann/json.hpp>

#include "common/check.h"

namespace mpserve::model {

using nlohmann::json;

namespace {

// The reference implementation refuses headers above 100 MB; so do we, before parsing anything.
constexpr uint64_t kMaxHeaderLen = 100ull * 1000 * 1000;

bool parse_dtype(const std::string& s, DType* out) {
  if (s == "F32") {
    *out = DType::kF32;
  } else if (s == "F16") {
    *out = DType::kF16;
  } else if (s == "BF16") {
    *out = DType::kBF16;
  } else {
    return false;
  }
  return true;
}

// A JSON integer in [0, 2^63), rejecting floats, negatives and bools.
bool json_to_u63(const json& v, uint64_t* out) {
  if (v.is_number_unsigned()) {
    *out = v.get<uint64_t>();
  } else if (v.is_number_integer()) {
    int64_t x = v.get<int64_t>();
    if (x < 0) return false;
    *out = static_cast<uint64_t>(x);
  } else {
    return false;
  }
  return *out <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
}

Status parse_entry(const std::string& name, const json& v, uint64_t data_size, const std::string& source,
                   SafetensorsEntry* e) {
  e->name = name;
  if (!v.is_object()) return Status::errorf("{}: tensor '{}': header entry is not a JSON object", source, name);

  auto dtype_it = v.find("dtype");
  if (dtype_it == v.end() || !dtype_it->is_string()) {
    return Status::errorf("{}: tensor '{}': missing or non-string 'dtype'", source, name);
  }
  const std::string& dtype = dtype_it->get_ref<const std::string&>();
  if (!parse_dtype(dtype, &e->dtype)) {
    return Status::errorf("{}: tensor '{}' has unsupported dtype '{}' (supported: F32, F16, BF16)", source, name,
                          dtype.substr(0, 32));
  }

  auto shape_it = v.find("shape");
  if (shape_it == v.end() || !shape_it->is_array()) {
    return Status::errorf("{}: tensor '{}': missing or non-array 'shape'", source, name);
  }
  if (shape_it->size() > 16) return Status::errorf("{}: tensor '{}': shape has more than 16 dimensions", source, name);
  uint64_t numel = 1;
  bool overflow = false;
  for (const json& d : *shape_it) {
    uint64_t dim = 0;
    if (!json_to_u63(d, &dim)) {
      return Status::errorf("{}: tensor '{}': shape entries must be non-negative integers", source, name);
    }
    e->shape.push_back(static_cast<int64_t>(dim));
    overflow = overflow || __builtin_mul_overflow(numel, dim, &numel);
  }
  uint64_t nbytes = 0;
  overflow = overflow || __builtin_mul_overflow(numel, dtype_size(e->dtype), &nbytes);
  if (overflow) {
    return Status::errorf("{}: tensor '{}': shape {} overflows", source, name,
                          TensorView{{}, e->dtype, e->shape}.shape_string());
  }

  auto off_it = v.find("data_offsets");
  if (off_it == v.end() || !off_it->is_array() || off_it->size() != 2 || !json_to_u63(off_it->at(0), &e->begin) ||
      !json_to_u63(off_it->at(1), &e->end)) {
    return Status::errorf("{}: tensor '{}': 'data_offsets' must be [begin, end] with non-negative integers", source,
                          name);
  }
  if (e->begin > e->end || e->end > data_size) {
    return Status::errorf("{}: tensor '{}': data_offsets [{}, {}] out of range (data section is {} bytes)", source,
                          name, e->begin, e->end, data_size);
  }
  if (e->end - e->begin != nbytes) {
    return Status::errorf("{}: tensor '{}': data_offsets [{}, {}] hold {} bytes but {} {} needs {}", source, name,
                          e->begin, e->end, e->end - e->begin, dtype, TensorView{{}, e->dtype, e->shape}.shape_string(),
                          nbytes);
  }
  return Status::ok();
}

Status parse_metadata(const json& v, const std::string& source, std::map<std::string, std::string>* out) {
  if (v.is_null()) return Status::ok();
  if (!v.is_object()) return Status::errorf("{}: '__metadata__' must be an object of strings", source);
  for (auto it = v.begin(); it != v.end(); ++it) {
    if (!it.value().is_string()) {
      return Status::errorf("{}: '__metadata__' value for '{}' is not a string", source, it.key());
    }
    (*out)[it.key()] = it.value().get<std::string>();
  }
  return Status::ok();
}

// Every tensor with bytes must own them alone.
Status check_no_overlap(const std::vector<SafetensorsEntry>& entries, const std::string& source) {
  std::vector<const SafetensorsEntry*> sorted;
  for (const SafetensorsEntry& e : entries) {
    if (e.end > e.begin) sorted.push_back(&e);
  }
  std::sort(sorted.begin(), sorted.end(), [](const SafetensorsEntry* a, const SafetensorsEntry* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  for (size_t i = 1; i < sorted.size(); ++i) {
    if (sorted[i]->begin < sorted[i - 1]->end) {
      return Status::errorf("{}: tensors '{}' [{}, {}] and '{}' [{}, {}] overlap", source, sorted[i - 1]->name,
                            sorted[i - 1]->begin, sorted[i - 1]->end, sorted[i]->name, sorted[i]->begin,
                            sorted[i]->end);
    }
  }
  return Status::ok();
}

}  // namespace

Result<SafetensorsHeader> parse_safetensors_header(std::string_view file_bytes, const std::string& source) {
  if (file_bytes.size() < 8) {
    return Status::errorf("{}: truncated safetensors file ({} bytes, need at least 8)", source, file_bytes.size());
  }
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(file_bytes[static_cast<size_t>(i)]);
  const uint64_t available = file_bytes.size() - 8;
  if (n > available) {
    return Status::errorf("{}: header length {} runs past the end of the file ({} bytes after the length prefix)",
                          source, n, available);
  }
  if (n > kMaxHeaderLen) return Status::errorf("{}: header length {} exceeds {} bytes", source, n, kMaxHeaderLen);

  SafetensorsHeader h;
  h.header_len = n;
  const char* json_begin = file_bytes.data() + 8;
  json j = json::parse(json_begin, json_begin + n, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Status::errorf("{}: header is not valid JSON", source);
  if (!j.is_object()) return Status::errorf("{}: header is not a JSON object", source);

  const uint64_t data_size = available - n;
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key() == "__metadata__") {
      MPS_RETURN_IF_ERROR(parse_metadata(it.value(), source, &h.metadata));
      continue;
    }
    SafetensorsEntry e;
    MPS_RETURN_IF_ERROR(parse_entry(it.key(), it.value(), data_size, source, &e));
    h.entries.push_back(std::move(e));
  }
  MPS_RETURN_IF_ERROR(check_no_overlap(h.entries, source));
  return h;
}

Result<std::unique_ptr<SafetensorsFile>> SafetensorsFile::open(const std::filesystem::path& path) {
  auto f = std::unique_ptr<SafetensorsFile>(new SafetensorsFile());
  MPS_ASSIGN_OR_RETURN(f->file_, MappedFile::open(path));
  std::string_view bytes(reinterpret_cast<const char*>(f->file_.data()), f->file_.size());
  MPS_ASSIGN_OR_RETURN(f->header_, parse_safetensors_header(bytes, path.string()));
  for (size_t i = 0; i < f->header_.entries.size(); ++i) f->index_[f->header_.entries[i].name] = i;
  return f;
}

Result<TensorView> SafetensorsFile::tensor(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) return Status::errorf("{}: no tensor named '{}'", path(), name);
  const SafetensorsEntry& e = header_.entries[it->second];
  TensorView v;
  v.name = e.name;
  v.dtype = e.dtype;
  v.shape = e.shape;
  // note: the data section starts at 8 + header_len, which writers pad to a multiple of 8, so
  // views are 8-byte aligned in files we write; foreign files may be less aligned.
  v.data = file_.data() + 8 + header_.header_len + e.begin;
  v.nbytes = static_cast<size_t>(e.end - e.begin);
  return v;
}

std::string safetensors_header_bytes(std::vector<SafetensorsEntry>* entries,
                                     const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  if (!metadata.empty()) j["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (SafetensorsEntry& e : *entries) {
    uint64_t nbytes = dtype_size(e.dtype);
    for (int64_t d : e.shape) {
      MPS_CHECK_MSG(d >= 0, "tensor {} has a negative dimension", e.name);
      nbytes *= static_cast<uint64_t>(d);
    }
    e.begin = offset;
    e.end = offset + nbytes;
    offset = e.end;
    MPS_CHECK_MSG(!j.contains(e.name), "duplicate tensor name {}", e.name);
    j[e.name] = {{"dtype", std::string(dtype_name(e.dtype))}, {"shape", e.shape}, {"data_offsets", {e.begin, e.end}}};
  }
  std::string text = j.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  std::string out(8, '\0');
  uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) out[static_cast<size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + text;
}

Status write_safetensors(const std::filesystem::path& path, const std::vector<TensorToWrite>& tensors,
                         const std::map<std::string, std::string>& metadata) {
  std::vector<SafetensorsEntry> entries;
  std::set<std::string> seen;
  for (const TensorToWrite& t : tensors) {
    if (t.name == "__metadata__" || !seen.insert(t.name).second) {
      return Status::errorf("{}: duplicate or reserved tensor name '{}'", path.string(), t.name);
    }
    SafetensorsEntry e;
    e.name = t.name;
    e.dtype = t.dtype;
    e.shape = t.shape;
    uint64_t numel = 1;
    for (int64_t d : t.shape) {
      if (d < 0) return Status::errorf("{}: tensor '{}' has a negative dimension", path.string(), t.name);
      numel *= static_cast<uint64_t>(d);
    }
    if (numel * dtype_size(t.dtype) != t.bytes.size()) {
      return Status::errorf("{}: tensor '{}' has {} bytes but its shape and dtype need {}", path.string(), t.name,
                            t.bytes.size(), numel * dtype_size(t.dtype));
    }
    entries.push_back(std::move(e));
  }
  std::string header = safetensors_header_bytes(&entries, metadata);

  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return Status::errorf("cannot create {}: {}", path.string(), std::strerror(errno));
  bool ok = std::fwrite(header.data(), 1, header.size(), f) == header.size();
  for (const TensorToWrite& t : tensors) {
    if (ok && !t.bytes.empty()) ok = std::fwrite(t.bytes.data(), 1, t.bytes.size(), f) == t.bytes.size();
  }
  ok = (std::fclose(f) == 0) && ok;
  if (!ok) return Status::errorf("cannot write {}: {}", path.string(), std::strerror(errno));
  return Status::ok();
}

}  // namespace mpserve::model
