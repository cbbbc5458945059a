// note: the reference (sampling.cpp) sorts; this kernel finds the same cut-offs without sorting.
// One 1024-thread block per row. The top-k and top-p prefixes of the order (logit desc, id asc)
// are located by radix select over an order-preserving 32-bit key of the logit, weighted by
// e_i = exp((l_i - m) / T) for top-p; ties at the cut-off key are resolved by id. The draw is a
// block-wide prefix scan in id order, as in the reference. Sums are reassociated (tree order, and
// shared-memory float atomics in the top-p histogram), so a draw can differ from the reference only
// when u lands within float rounding of a boundary.
#include <cmath>

#include "backend/cuda/cuda_check.cuh"
#include "backend/cuda/pdl.cuh"
#include "backend/cuda/sampler.cuh"

namespace mpserve::backend::cuda {
namespace {

constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;

struct SamplerShared {
  int cnt[256];
  float mass[256];
  float red_f[kWarps];
  int red_i[kWarps];
  int bucket;
  int ties;
  int result;
  float scan_carry;
};

// Larger float -> larger key.
__device__ __forceinline__ uint32_t order_key(float f) {
  const uint32_t b = __float_as_uint(f);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__device__ float block_sum(float v, SamplerShared& sh) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();
  if ((threadIdx.x & 31) == 0) sh.red_f[threadIdx.x >> 5] = v;
  __syncthreads();
  float t = 0.f;
  for (int w = 0; w < kWarps; ++w) t += sh.red_f[w];
  return t;
}

__device__ int block_max_int(int v, SamplerShared& sh) {
  for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
  __syncthreads();
  if ((threadIdx.x & 31) == 0) sh.red_i[threadIdx.x >> 5] = v;
  __syncthreads();
  int t = sh.red_i[0];
  for (int w = 1; w < kWarps; ++w) t = max(t, sh.red_i[w]);
  return t;
}

// Argmax, ties to the lowest id.
__device__ int block_argmax(const float* x, int n, SamplerShared& sh) {
  float best = -INFINITY;
  int best_i = n;
  for (int i = threadIdx.x; i < n; i += kThreads) {
    const float v = x[i];
    if (v > best || (best_i == n && !(v < best))) best = v, best_i = i;  // first seen keeps ties
  }
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, best, o);
    const int oi = __shfl_xor_sync(0xffffffffu, best_i, o);
    if (ov > best || (ov == best && oi < best_i)) best = ov, best_i = oi;
  }
  __syncthreads();
  if ((threadIdx.x & 31) == 0) sh.red_f[threadIdx.x >> 5] = best, sh.red_i[threadIdx.x >> 5] = best_i;
  __syncthreads();
  best = sh.red_f[0];
  best_i = sh.red_i[0];
  for (int w = 1; w < kWarps; ++w) {
    if (sh.red_f[w] > best || (sh.red_f[w] == best && sh.red_i[w] < best_i)) best = sh.red_f[w], best_i = sh.red_i[w];
  }
  return best_i < n ? best_i : 0;
}

struct Cut {
  uint32_t key = 0;       // key of the last element of the prefix
  int count_above = 0;    // elements with a larger key
  float mass_above = 0.f;
  int ties = 0;           // elements with this key
};

// Walking the order from the largest key, finds the key where the running count (by_mass=false)
// reaches `target_count`, or the running mass of e reaches `target_mass`.
__device__ Cut radix_select(const float* x, int n, float m, float inv_t, bool by_mass, int target_count,
                            float target_mass, SamplerShared& sh) {
  Cut cut;
  uint32_t mask = 0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = threadIdx.x; i < 256; i += kThreads) sh.cnt[i] = 0, sh.mass[i] = 0.f;
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += kThreads) {
      const float v = x[i];
      const uint32_t k = order_key(v);
      if ((k & mask) != cut.key) continue;
      const int b = (k >> shift) & 255;
      atomicAdd(&sh.cnt[b], 1);
      atomicAdd(&sh.mass[b], expf((v - m) * inv_t));
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      int cum_c = 0, chosen = -1, last = -1;
      float cum_m = 0.f;
      for (int b = 255; b >= 0; --b) {
        if (sh.cnt[b] == 0) continue;
        last = b;
        const bool reached = by_mass ? cum_m + sh.mass[b] >= target_mass - cut.mass_above
                                      : cum_c + sh.cnt[b] >= target_count - cut.count_above;
        if (reached) {
          chosen = b;
          break;
        }
        cum_c += sh.cnt[b];
        cum_m += sh.mass[b];
      }
      if (chosen < 0) {  // rounding: the target exceeds the total; take everything in play
        chosen = last;
        cum_c -= sh.cnt[last];
        cum_m -= sh.mass[last];
      }
      sh.bucket = chosen;
      sh.ties = sh.cnt[chosen];
      sh.red_i[0] = cum_c;
      sh.red_f[0] = cum_m;
    }
    __syncthreads();
    cut.key |= static_cast<uint32_t>(sh.bucket) << shift;
    mask |= 0xffu << shift;
    cut.count_above += sh.red_i[0];
    cut.mass_above += sh.red_f[0];
    cut.ties = sh.ties;
    __syncthreads();
  }
  return cut;
}

// The r-th (1-based) smallest id whose key equals `key`.
__device__ int nth_id_with_key(const float* x, int n, uint32_t key, int r, SamplerShared& sh) {
  int seen = 0;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int start = 0; start < n; start += kThreads) {
    const int i = start + threadIdx.x;
    const bool f = i < n && order_key(x[i]) == key;
    const int total = __syncthreads_count(f);
    if (seen + total >= r) {
      const unsigned ballot = __ballot_sync(0xffffffffu, f);
      if (lane == 0) sh.red_i[warp] = __popc(ballot);
      __syncthreads();
      if (f) {
        int before = seen + __popc(ballot & ((1u << lane) - 1u));
        for (int w = 0; w < warp; ++w) before += sh.red_i[w];
        if (before + 1 == r) sh.result = i;
      }
      __syncthreads();
      return sh.result;
    }
    seen += total;
  }
  return n - 1;  // unreachable for a valid r
}

// Inclusive block scan of v; also returns the block total through `total`.
__device__ float block_inclusive_scan(float v, float* total, SamplerShared& sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int o = 1; o < 32; o <<= 1) {
    const float t = __shfl_up_sync(0xffffffffu, v, o);
    if (lane >= o) v += t;
  }
  __syncthreads();
  if (lane == 31) sh.red_f[warp] = v;
  __syncthreads();
  float before = 0.f, all = 0.f;
  for (int w = 0; w < kWarps; ++w) {
    if (w < warp) before += sh.red_f[w];
    all += sh.red_f[w];
  }
  *total = all;
  return v + before;
}

__global__ void __launch_bounds__(kThreads) sample_kernel(const float* logits, const SampleParamsDev* params,
                                                          int32_t* out, int vocab) {
  __shared__ SamplerShared sh;
  pdl_wait();  // the logits come from the LM head
  pdl_trigger();
  const int row = blockIdx.x;
  const float* x = logits + static_cast<int64_t>(row) * vocab;
  const SampleParamsDev p = params[row];
  const int argmax = block_argmax(x, vocab, sh);
  if (p.temperature <= 0.f || p.top_k == 1) {
    if (threadIdx.x == 0) out[row] = argmax;
    return;
  }
  const float inv_t = 1.0f / p.temperature;
  const float m = x[argmax];
  const bool use_top_k = p.top_k > 0 && p.top_k < vocab;
  const bool use_top_p = p.top_p < 1.0f;

  // The kept set is the prefix of the order ending at (cut_key, cut_id); all ids when neither cut.
  bool all_kept = true;
  uint32_t cut_key = 0;
  int cut_rank = 0;  // 1-based rank among the ties at cut_key
  if (use_top_k || use_top_p) {
    all_kept = false;
    float cand_mass = 0.f;
    if (use_top_k) {
      const Cut c = radix_select(x, vocab, m, inv_t, /*by_mass=*/false, p.top_k, 0.f, sh);
      cut_key = c.key;
      cut_rank = p.top_k - c.count_above;
      // Every tie shares one logit, hence one e.
      cand_mass = c.mass_above;
      if (use_top_p) {
        int any = -1;
        for (int i = threadIdx.x; i < vocab; i += kThreads)
          if (order_key(x[i]) == cut_key) any = i;
        any = block_max_int(any, sh);
        cand_mass += static_cast<float>(cut_rank) * expf((x[any] - m) * inv_t);
      }
    } else {
      float s = 0.f;
      for (int i = threadIdx.x; i < vocab; i += kThreads) s += expf((x[i] - m) * inv_t);
      cand_mass = block_sum(s, sh);
    }
    if (use_top_p) {
      const float threshold = p.top_p * cand_mass;
      const Cut c = radix_select(x, vocab, m, inv_t, /*by_mass=*/true, 0, threshold, sh);
      int any = -1;
      for (int i = threadIdx.x; i < vocab; i += kThreads)
        if (order_key(x[i]) == c.key) any = i;
      any = block_max_int(any, sh);
      const float e = expf((x[any] - m) * inv_t);
      int r = e > 0.f ? static_cast<int>(ceilf((threshold - c.mass_above) / e)) : c.ties;
      r = min(max(r, 1), c.ties);
      // The shorter of the two prefixes: a larger key, or the same key with fewer ties.
      if (!use_top_k || c.key > cut_key || (c.key == cut_key && r < cut_rank)) cut_key = c.key, cut_rank = r;
    }
  }
  const int cut_id = all_kept ? vocab : nth_id_with_key(x, vocab, cut_key, cut_rank, sh);

  // Inverse CDF in id order over the kept ids.
  auto kept_e = [&](int i) -> float {
    if (i >= vocab) return 0.f;
    const float v = x[i];
    if (!all_kept) {
      const uint32_t k = order_key(v);
      if (!(k > cut_key || (k == cut_key && i <= cut_id))) return 0.f;
    }
    return expf((v - m) * inv_t);
  };
  float local = 0.f;
  int last_nonzero = -1;
  for (int i = threadIdx.x; i < vocab; i += kThreads) {
    const float e = kept_e(i);
    local += e;
    if (e > 0.f) last_nonzero = i;
  }
  const float total = block_sum(local, sh);
  last_nonzero = block_max_int(last_nonzero, sh);
  const float target = p.u * total;
  float running = 0.f;
  for (int start = 0; start < vocab; start += kThreads) {
    const int i = start + threadIdx.x;
    float chunk_total;
    const float incl = block_inclusive_scan(kept_e(i), &chunk_total, sh);
    const int below = __syncthreads_count(i < vocab && running + incl <= target);
    const int valid = min(kThreads, vocab - start);
    if (below < valid) {
      if (threadIdx.x == 0) out[row] = start + below;
      return;
    }
    running += chunk_total;
  }
  if (threadIdx.x == 0) out[row] = last_nonzero >= 0 ? last_nonzero : argmax;
}

}  // namespace

void sample_tokens(const float* logits, const SampleParamsDev* params, int32_t* out_tokens, int rows, int vocab,
                   cudaStream_t stream) {
  CUDA_SHAPE_CHECK(rows >= 0 && vocab > 0);
  if (rows == 0) return;
  launch_kernel(sample_kernel, dim3(rows), dim3(kThreads), 0, stream, logits, params, out_tokens, vocab);
}

}  // namespace mpserve::backend::cuda
