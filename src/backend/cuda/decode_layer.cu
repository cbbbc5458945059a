// The persistent decode-layer kernel (decode_layer.cuh).
#include "backend/cuda/decode_layer.cuh"

#include <algorithm>
#include <cstdlib>

#include "backend/cuda/cuda_check.cuh"
#include "backend/cuda/gemv_body.cuh"
#include "backend/cuda/pdl.cuh"

namespace mpserve::backend::cuda {
namespace {

using namespace gemv_detail;

constexpr int kBlockWarps = kMaxWarps;
// One n-tile for the plain phases (one or two rows), two for SwiGLU (a gate and an up n-tile).
constexpr int kNt = 1;
constexpr int kNtSwiGlu = 2;
constexpr int kLd = 2;  // 16-byte weight loads per lane and item

// Warps per group: a power of two that covers the phase's items along `in` (at most the block),
// so groups of one block work on different tiles at once.
int group_warps(const GemvArgs& a, int n_tiles) {
  const int items = k_items(a.in, n_tiles * kLoads / kLd);
  int w = 1;
  while (w < items && w < kBlockWarps) w *= 2;
  return w;
}

struct Groups {
  int o, gate_up, down, next;
};

__device__ __forceinline__ unsigned ld_acquire(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

// Grid barrier, split so that a phase's first weight loads go out between arrive() and wait_all().
// note: the counter only grows within a launch (barrier i completes at i * gridDim.x); the last
// block out resets it (see the kernel's end). Every block is resident (cooperative launch), so
// the spin ends; the bound turns a broken invariant into a trap (a launch error) instead of a hang.
__device__ __forceinline__ void arrive(unsigned* counter) {
  __syncthreads();  // the block's writes of this phase are done
  if (threadIdx.x == 0) {
    __threadfence();  // ... and visible device-wide before the count says so
    atomicAdd(counter, 1u);
  }
}
__device__ __forceinline__ void wait_all(const unsigned* counter, unsigned target) {
  if (threadIdx.x == 0) {
    unsigned long long spins = 0;
    while (ld_acquire(counter) < target) {
      if (++spins > (1ull << 28)) __trap();
    }
  }
  __syncthreads();
}

// One phase: waits for the earlier kernels (kFirst) or for the barrier's `target` count; kLast lets
// the next kernel start launching after the wait.
template <GemvIn IN, GemvOut OUT, int NT, bool kFirst, bool kLast>
__device__ __forceinline__ void phase(const GemvArgs& a, int group, unsigned char* smem, const unsigned* counter,
                                      unsigned target) {
  gemv_body<IN, OUT, NT, true, kLd>(a, split_block(group), smem, [&] {
    if constexpr (kFirst) {
      pdl_wait();
    } else {
      wait_all(counter, target);
    }
    if constexpr (kLast) pdl_trigger();
  });
}

// kBlocks blocks per SM: 2 caps a thread at 64 registers (the phases together spill ~0.4 KB a
// thread), 1 allows 128 (no spill, half the warps).
template <int kBlocks>
__global__ void __launch_bounds__(kBlockWarps * 32, kBlocks) decode_layer_kernel(DecodeLayerArgs a, Groups gw) {
  extern __shared__ __align__(16) unsigned char smem[];
  unsigned* counter = a.barrier;
  const unsigned n = gridDim.x;
  const bool has_next = a.next.w != nullptr;
  // Phase 1 waits for the earlier kernels (the attention output, the residual); the others for
  // the barrier before them. The last phase lets the next kernel (attention, or the argmax /
  // sampler) start launching: it waits for this grid to finish before it reads anything.
  phase<GemvIn::kBf16, GemvOut::kAddF32, kNt, true, false>(a.o, gw.o, smem, counter, 0);
  arrive(counter);
  phase<GemvIn::kRmsNorm, GemvOut::kSwiGlu, kNtSwiGlu, false, false>(a.gate_up, gw.gate_up, smem, counter, n);
  arrive(counter);
  if (!has_next) {
    phase<GemvIn::kBf16, GemvOut::kAddF32, kNt, false, true>(a.down, gw.down, smem, counter, 2 * n);
  } else {
    phase<GemvIn::kBf16, GemvOut::kAddF32, kNt, false, false>(a.down, gw.down, smem, counter, 2 * n);
    arrive(counter);
    if (a.next_is_lm_head) {
      phase<GemvIn::kRmsNorm, GemvOut::kF32, kNt, false, true>(a.next, gw.next, smem, counter, 3 * n);
    } else {
      phase<GemvIn::kRmsNorm, GemvOut::kQkvRope, kNt, false, true>(a.next, gw.next, smem, counter, 3 * n);
    }
  }
  // Reset for the next launch: a block gets here only after its last wait, so when the last of
  // them counts itself out, every block has seen the final count.
  __syncthreads();
  if (threadIdx.x == 0 && atomicAdd(counter + 1, 1u) == n - 1) {
    counter[0] = 0;
    counter[1] = 0;
  }
}

}  // namespace

void decode_layer_tail(const DecodeLayerArgs& a, int blocks_per_sm, cudaStream_t stream) {
  CUDA_SHAPE_CHECK(blocks_per_sm == 1 || blocks_per_sm == 2);
  const int rows = a.o.rows;
  CUDA_SHAPE_CHECK(rows >= 1 && rows <= kDecodeLayerMaxRows && a.barrier);
  CUDA_SHAPE_CHECK(a.gate_up.rows == rows && a.down.rows == rows && (!a.next.w || a.next.rows == rows));
  check_args(a.o, GemvIn::kBf16, GemvOut::kAddF32);
  check_args(a.gate_up, GemvIn::kRmsNorm, GemvOut::kSwiGlu);
  check_args(a.down, GemvIn::kBf16, GemvOut::kAddF32);
  const GemvOut next_out = a.next_is_lm_head ? GemvOut::kF32 : GemvOut::kQkvRope;
  if (a.next.w) check_args(a.next, GemvIn::kRmsNorm, next_out);
  Groups gw{group_warps(a.o, kNt), group_warps(a.gate_up, kNtSwiGlu), group_warps(a.down, kNt),
            a.next.w ? group_warps(a.next, kNt) : 1};
  size_t smem = std::max({smem_bytes(GemvIn::kBf16, rows, a.o.in, kBlockWarps, kNt),
                          smem_bytes(GemvIn::kRmsNorm, rows, a.gate_up.in, kBlockWarps, kNtSwiGlu),
                          smem_bytes(GemvIn::kBf16, rows, a.down.in, kBlockWarps, kNt)});
  if (a.next.w) smem = std::max(smem, smem_bytes(GemvIn::kRmsNorm, rows, a.next.in, kBlockWarps, kNt));
  CUDA_SHAPE_CHECK(smem <= (110u << 10));  // two blocks per SM
  auto kernel = blocks_per_sm == 2 ? decode_layer_kernel<2> : decode_layer_kernel<1>;
  const int per_sm = std::min(blocks_per_sm, resident_blocks(reinterpret_cast<const void*>(kernel), kBlockWarps * 32, smem));
  static const bool coop = [] {
    const char* v = std::getenv("MPSERVE_CUDA_DECODE_LAYER_COOP");
    return !(v && v[0] == '0');
  }();
  if (coop) {
    launch_kernel_cooperative(kernel, dim3(per_sm * device_sms()), dim3(kBlockWarps * 32), smem, stream, a, gw);
  } else {
    launch_kernel(kernel, dim3(per_sm * device_sms()), dim3(kBlockWarps * 32), smem, stream, a, gw);
  }
}

}  // namespace mpserve::backend::cuda
