#include "cli/engine_flags.h"

#include <algorithm>

#include "backend/backend.h"
#include "model/model_writer.h"

namespace mpserve::cli {

void add_engine_flags(CLI::App* cmd, EngineFlags* f) {
  cmd->add_option("--model", f->model_dir, "Hugging Face model directory (default: the embedded tiny model)");
  cmd->add_option("--device", f->device, "cpu | cuda")->capture_default_str();
  cmd->add_option("--max-num-seqs", f->max_num_seqs, "most sequences in one batch")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  cmd->add_option("--max-num-batched-tokens", f->max_num_batched_tokens, "token budget of one step")
      ->check(CLI::Range(16, 1 << 20))
      ->capture_default_str();
  cmd->add_option("--max-model-len", f->max_model_len, "longest sequence, prompt plus output")
      ->check(CLI::Range(16, 1 << 20))
      ->capture_default_str();
  cmd->add_option("--block-size", f->block_size, "tokens per KV-cache block")
      ->check(CLI::IsMember({8, 16, 32, 64}))
      ->capture_default_str();
  cmd->add_option("--threads", f->threads, "CPU backend threads (0 = all cores)")->check(CLI::Range(0, 1024));
  cmd->add_option("--kv-cache-mb", f->kv_cache_mb, "CPU backend KV-cache size in MiB (0 = automatic)")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 20));
  cmd->add_option("--gpu-memory-fraction", f->gpu_memory_fraction,
                  "share of the GPU's memory this engine may use (weights, KV cache, workspace)")
      ->check(CLI::Range(0.01, 1.0))
      ->capture_default_str();
  cmd->add_option("--gpu", f->gpu, "GPU index")->check(CLI::Range(0, 63));
  cmd->add_flag("--no-cuda-graphs", f->no_cuda_graphs, "launch decode steps without CUDA graphs");
  cmd->add_flag("--no-prefix-caching", f->no_prefix_caching, "do not share KV blocks between equal prompt prefixes");
  cmd->add_flag("--no-chunked-prefill", f->no_chunked_prefill, "run each prompt's prefill in one step");
  cmd->add_option("--ablate", f->ablate,
                  "study knob: none | attention (run only MLP blocks) | mlp (run only attention blocks)")
      ->capture_default_str();
  cmd->add_option("--step-cpu-us", f->step_cpu_us, "study knob: host busy time added to every engine step (µs)")
      ->check(CLI::Range(int64_t{0}, int64_t{10'000'000}));
  cmd->add_flag("--async-scheduling", f->async_scheduling,
               "schedule step t+1 on the host while the device runs step t (same outputs)");
  cmd->add_option("--max-waiting", f->max_waiting,
                  "most queued (not yet running) requests; more are refused as overloaded (HTTP 429)")
      ->check(CLI::Range(1, 1 << 24))
      ->capture_default_str();
  cmd->add_option("--debug-fault-after-requests", f->debug_fault_after_requests,
                  "testing only: after N finished requests, fault the device (CUDA: illegal-address kernel)")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 40))
      ->group("Testing");
}

Result<std::filesystem::path> resolve_model_dir(const std::string& flag) {
  if (!flag.empty()) return std::filesystem::path(flag);
  return model::ensure_default_model();
}

Result<LoadedEngine> load_engine(const EngineFlags& f) {
  LoadedEngine le;
  MPS_ASSIGN_OR_RETURN(le.model_dir, resolve_model_dir(f.model_dir));
  MPS_ASSIGN_OR_RETURN(backend::Device device, backend::parse_device(f.device));
  MPS_ASSIGN_OR_RETURN(backend::Ablation ablation, backend::parse_ablation(f.ablate));
  MPS_ASSIGN_OR_RETURN(le.weights, model::load_model(le.model_dir));
  MPS_ASSIGN_OR_RETURN(le.tokenizer, tokenizer::Tokenizer::load(le.model_dir));

  engine::EngineOptions eo;
  eo.backend.device = device;
  eo.backend.block_size = f.block_size;
  eo.backend.max_num_seqs = f.max_num_seqs;
  eo.backend.max_num_batched_tokens = f.max_num_batched_tokens;
  int64_t ctx = le.weights->config.max_position_embeddings;
  eo.backend.max_model_len = ctx > 0 ? static_cast<int>(std::min<int64_t>(f.max_model_len, ctx)) : f.max_model_len;
  eo.backend.ablation = ablation;
  eo.backend.num_threads = f.threads;
  eo.backend.cpu_kv_cache_bytes = f.kv_cache_mb * 1024 * 1024;
  eo.backend.gpu_index = f.gpu;
  eo.backend.gpu_memory_fraction = f.gpu_memory_fraction;
  eo.backend.cuda_graphs = !f.no_cuda_graphs;
  eo.enable_chunked_prefill = !f.no_chunked_prefill;
  eo.enable_prefix_caching = !f.no_prefix_caching;
  eo.step_cpu_us = f.step_cpu_us;
  eo.async_scheduling = f.async_scheduling;
  eo.debug_fault_after_requests = f.debug_fault_after_requests;
  eo.max_waiting = f.max_waiting;
  if (!eo.enable_chunked_prefill && eo.backend.max_num_batched_tokens < eo.backend.max_model_len) {
    return Status::errorf("--no-chunked-prefill needs --max-num-batched-tokens ({}) >= --max-model-len ({})",
                          eo.backend.max_num_batched_tokens, eo.backend.max_model_len);
  }

  MPS_ASSIGN_OR_RETURN(std::unique_ptr<backend::Backend> be, backend::make_backend(*le.weights, eo.backend));
  le.engine = std::make_unique<engine::Engine>(eo, std::move(be), *le.tokenizer);
  return le;
}

}  // namespace mpserve::cli
