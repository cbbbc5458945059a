// The rest of a decoder layer after attention, for decode steps of one or two rows, as one
// persistent kernel: o projection + residual add, RMSNorm + gate/up + SwiGLU, down projection +
// residual add, then either the next layer's RMSNorm + qkv + RoPE + KV-cache write or the final
// norm + LM head. The phases are the fused GEMVs of gemv.cuh, run by every block of a grid that is
// resident at once (cooperative launch), separated by grid barriers instead of kernel boundaries.
//
// note: why. At batch 1 the 0.5B-3B layers are a chain of small GEMVs (2-90 MB) whose cost is
// latency: each kernel boundary drains the memory pipe and refills it. A grid barrier keeps the
// blocks and their registers: each warp issues its first weight loads of the next phase before it
// waits at the barrier, so the weight stream restarts while the slowest block finishes.
// A step then has two kernels per layer (attention and this one) instead of five.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "backend/cuda/gemv.cuh"

namespace mpserve::backend::cuda {

constexpr int kDecodeLayerMaxRows = 2;

struct DecodeLayerArgs {
  GemvArgs o;        // kBf16 -> kAddF32: residual += attention output . o^T
  GemvArgs gate_up;  // kRmsNorm -> kSwiGlu
  GemvArgs down;     // kBf16 -> kAddF32: residual += act . down^T
  // kRmsNorm -> kQkvRope (the next layer's projection, next_is_lm_head false) or kRmsNorm -> kF32
  // (final norm and LM head into the logits); next.w == nullptr: no fourth phase.
  GemvArgs next;
  bool next_is_lm_head = false;
  // Two counters, zero before the first launch; every launch leaves them zero. Launches that use
  // the same counters must be ordered (one stream).
  unsigned* barrier = nullptr;
};

// Every GemvArgs with the same rows (1..kDecodeLayerMaxRows); the shape checks of gemv().
// blocks_per_sm: 2 (512-thread blocks, 64 registers a thread) or 1 (128 registers).
void decode_layer_tail(const DecodeLayerArgs& a, int blocks_per_sm, cudaStream_t stream);

}  // namespace mpserve::backend::cuda
