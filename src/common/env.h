// Every environment variable mpserve reads is declared here, in one place (STYLE.md).
#pragma once

#include <optional>
#include <string>

namespace mpserve::env {

// Log level: debug | info | warn | error | off (default info).
inline constexpr const char* kLogLevel = "MPSERVE_LOG_LEVEL";
// Cache directory for the embedded default model; else $XDG_CACHE_HOME/mpserve, else ~/.cache/mpserve.
inline constexpr const char* kCacheDir = "MPSERVE_CACHE_DIR";
inline constexpr const char* kXdgCacheHome = "XDG_CACHE_HOME";
inline constexpr const char* kHome = "HOME";
// Directory holding the source tokenizer.json / tokenizer_config.json that make-model copies.
inline constexpr const char* kTokenizerDir = "MPSERVE_TOKENIZER_DIR";
// CUDA backend: decode steps of at most this many rows use the fused GEMV path (0 = no GEMV).
inline constexpr const char* kCudaGemvMaxRows = "MPSERVE_CUDA_GEMV_MAX_ROWS";
// CUDA backend: decode steps above the GEMV's rows and at most this many use the tensor-core
// decode linears (mma_linear.cuh; 0 = cuBLASLt there, at most 64); default by model size
// (cuda_backend.cpp: 16 up to hidden 1536, 64 at 2048, 0 above).
inline constexpr const char* kCudaMmaLinearMaxRows = "MPSERVE_CUDA_MMA_LINEAR_MAX_ROWS";
// CUDA backend: decode linears that take the tensor-core kernel also at the GEMV's row counts, a
// comma list of gate_up, lm_head (cuda_backend.cpp has the default).
inline constexpr const char* kCudaMmaSmall = "MPSERVE_CUDA_MMA_SMALL";
// CUDA backend: 0 launches every kernel without programmatic dependent launch (A/B runs); default on.
inline constexpr const char* kCudaPdl = "MPSERVE_CUDA_PDL";
// CUDA backend: 0 keeps cuBLASLt's heuristic algorithm for the decode GEMMs instead of timing its
// top candidates on first use (gemm.h); default on.
inline constexpr const char* kCudaGemmTune = "MPSERVE_CUDA_GEMM_TUNE";
// CUDA backend: cp.async pipeline depth of decode attention, 2 or 3 (A/B runs); unset: 2 for
// 8-warp blocks, 3 for 4-warp blocks (decode_attention.cu).
inline constexpr const char* kCudaAttnStages = "MPSERVE_CUDA_ATTN_STAGES";
// CUDA backend: 0 leaves the driver's shared-memory carveout for the kernels that run between
// cuBLASLt GEMMs or tensor-core linears (pdl.cuh LaunchOptions::max_shared); default on.
inline constexpr const char* kCudaPreferShared = "MPSERVE_CUDA_PREFER_SHARED";
// CUDA backend: 0 keeps decode attention on the partition path (partials merged through global
// memory) where it would use thread-block clusters (attention.cuh); default on.
inline constexpr const char* kCudaClusterAttention = "MPSERVE_CUDA_CLUSTER_ATTENTION";
// CUDA backend: 0 keeps decode attention's bucket policy (clusters or partitions) where a step
// would run one block per (sequence, kv head) (decode_one_block_warps); default on.
inline constexpr const char* kCudaOneBlockAttention = "MPSERVE_CUDA_ONE_BLOCK_ATTENTION";
// MPS client environment (set by the supervisor for each engine, read by the CUDA driver).
inline constexpr const char* kMpsPipeDir = "CUDA_MPS_PIPE_DIRECTORY";
inline constexpr const char* kMpsLogDir = "CUDA_MPS_LOG_DIRECTORY";
inline constexpr const char* kMpsActiveThreadPct = "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE";
inline constexpr const char* kMpsPinnedMemLimit = "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT";
inline constexpr const char* kCudaVisibleDevices = "CUDA_VISIBLE_DEVICES";
// `mpserve advise` / `serve --engines auto`: a study results.csv to use before the shipped one.
inline constexpr const char* kStudyResults = "MPSERVE_STUDY_RESULTS";
// Path of nvidia-cuda-mps-control for `mpserve serve` (tests point it at a stand-in); else found on PATH.
inline constexpr const char* kMpsControlBin = "MPSERVE_MPS_CONTROL_BIN";
// Set by `mpserve serve` on every process it starts; its cleanup finds leftovers by this mark.
inline constexpr const char* kSupervisorToken = "MPSERVE_SUPERVISOR_TOKEN";
// Executable search path (the supervisor resolves engine and MPS commands on it).
inline constexpr const char* kPath = "PATH";

std::optional<std::string> get(const char* name);
std::string get_string(const char* name, const std::string& fallback);

}  // namespace mpserve::env
