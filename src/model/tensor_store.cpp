// TensorStore: every tensor of a model directory, from one file or from index-listed shards.
#include "model/safetensors.h"

#include <nlohmann/json.hpp>

#include "common/file_util.h"

namespace mpserve::model {

namespace {

constexpr const char* kSingleFile = "model.safetensors";
constexpr const char* kIndexFile = "model.safetensors.index.json";

// A shard name must stay inside the model directory.
bool is_plain_file_name(const std::string& s) {
  return !s.empty() && s != "." && s != ".." && s.find('/') == std::string::npos &&
         s.find('\\') == std::string::npos && s.find('\0') == std::string::npos;
}

}  // namespace

Result<std::unique_ptr<TensorStore>> TensorStore::open_dir(const std::filesystem::path& dir) {
  auto store = std::unique_ptr<TensorStore>(new TensorStore());
  std::error_code ec;
  const std::filesystem::path index_path = dir / kIndexFile;
  const std::filesystem::path single_path = dir / kSingleFile;

  if (!std::filesystem::exists(index_path, ec)) {
    if (!std::filesystem::exists(single_path, ec)) {
      return Status::errorf("{}: no {} or {}", dir.string(), kSingleFile, kIndexFile);
    }
    MPS_ASSIGN_OR_RETURN(auto file, SafetensorsFile::open(single_path));
    for (const SafetensorsEntry& e : file->header().entries) store->where_[e.name] = 0;
    store->files_.push_back(std::move(file));
    return store;
  }

  const std::string source = index_path.string();
  MPS_ASSIGN_OR_RETURN(std::string text, read_file(index_path));
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return Status::errorf("{}: not a JSON object", source);
  auto wm = j.find("weight_map");
  if (wm == j.end() || !wm->is_object()) return Status::errorf("{}: missing object field 'weight_map'", source);

  std::map<std::string, size_t> shard_index;  // shard file name -> files_ index; each opened once
  for (auto it = wm->begin(); it != wm->end(); ++it) {
    if (!it.value().is_string()) {
      return Status::errorf("{}: weight_map entry for tensor '{}' is not a file name", source, it.key());
    }
    const std::string shard = it.value().get<std::string>();
    if (!is_plain_file_name(shard)) {
      return Status::errorf("{}: tensor '{}' maps to '{}', which is not a file in {}", source, it.key(), shard,
                            dir.string());
    }
    auto found = shard_index.find(shard);
    if (found == shard_index.end()) {
      const std::filesystem::path shard_path = dir / shard;
      if (!std::filesystem::exists(shard_path, ec)) {
        return Status::errorf("{}: shard {} (listed for tensor '{}') does not exist", source, shard_path.string(),
                              it.key());
      }
      MPS_ASSIGN_OR_RETURN(auto file, SafetensorsFile::open(shard_path));
      found = shard_index.emplace(shard, store->files_.size()).first;
      store->files_.push_back(std::move(file));
    }
    const SafetensorsFile& file = *store->files_[found->second];
    if (!file.tensor(it.key()).is_ok()) {
      return Status::errorf("{}: tensor '{}' is listed in {} but missing from the shard", file.path(), it.key(),
                            source);
    }
    store->where_[it.key()] = found->second;
  }
  return store;
}

Result<TensorView> TensorStore::tensor(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) return Status::errorf("no tensor named '{}'", name);
  return files_[it->second]->tensor(name);
}

std::vector<std::string> TensorStore::names() const {
  std::vector<std::string> out;
  out.reserve(where_.size());
  for (const auto& [name, file] : where_) out.push_back(name);
  return out;
}

std::string TensorStore::file_of(const std::string& name) const {
  auto it = where_.find(name);
  return it == where_.end() ? std::string() : files_[it->second]->path();
}

}  // namespace mpserve::model
