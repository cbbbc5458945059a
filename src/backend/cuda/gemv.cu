// note: one warp owns two weight rows (two outputs, or the gate and up rows of one SwiGLU output)
// for every batch row, so each weight byte is read once and the reduction needs no atomics; every
// lane streams 16-byte chunks of both rows, and the loop is unrolled so that several chunks are in
// flight. With kRmsNorm every block recomputes the norm of the (rows <= 8, in) residual into
// shared memory: a few KB from L2 per block against megabytes of weights.
#include <algorithm>
#include <cmath>

#include "backend/cuda/cuda_check.cuh"
#include "backend/cuda/gemv.cuh"

namespace mpserve::backend::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;

__device__ __forceinline__ float dot8(const uint4& w, const uint4& x, float acc) {
  const __nv_bfloat162* wp = reinterpret_cast<const __nv_bfloat162*>(&w);
  const __nv_bfloat162* xp = reinterpret_cast<const __nv_bfloat162*>(&x);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 wf = __bfloat1622float2(wp[i]);
    const float2 xf = __bfloat1622float2(xp[i]);
    acc = fmaf(wf.x, xf.x, acc);
    acc = fmaf(wf.y, xf.y, acc);
  }
  return acc;
}

template <int R, GemvIn IN, GemvOut OUT>
__global__ void __launch_bounds__(kThreads) gemv_kernel(GemvArgs a) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int in = a.in;

  const __nv_bfloat16* x;  // (R, in): shared memory (kRmsNorm) or global
  if constexpr (IN == GemvIn::kRmsNorm) {
    __shared__ float inv_s[R];
    const float* res = static_cast<const float*>(a.x);
    __nv_bfloat16* xs = reinterpret_cast<__nv_bfloat16*>(smem);
    for (int r = warp; r < R; r += kWarps) {
      const float4* row = reinterpret_cast<const float4*>(res + static_cast<int64_t>(r) * in);
      float ss = 0.f;
      for (int i = lane; i < in / 4; i += 32) {
        const float4 v = row[i];
        ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
      }
      for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
      if (lane == 0) inv_s[r] = rsqrtf(ss / static_cast<float>(in) + a.eps);
    }
    __syncthreads();
    const __nv_bfloat162* w2 = reinterpret_cast<const __nv_bfloat162*>(a.norm_w);
    for (int idx = threadIdx.x; idx < R * (in / 4); idx += kThreads) {
      const int r = idx / (in / 4), c = idx - r * (in / 4);
      const float4 v = reinterpret_cast<const float4*>(res + static_cast<int64_t>(r) * in)[c];
      const float inv = inv_s[r];
      const float2 wa = __bfloat1622float2(w2[2 * c]);
      const float2 wb = __bfloat1622float2(w2[2 * c + 1]);
      __nv_bfloat162* dst = reinterpret_cast<__nv_bfloat162*>(xs + r * in + 4 * c);
      dst[0] = __floats2bfloat162_rn(v.x * inv * wa.x, v.y * inv * wa.y);
      dst[1] = __floats2bfloat162_rn(v.z * inv * wb.x, v.w * inv * wb.y);
    }
    __syncthreads();
    x = xs;
  } else {
    x = static_cast<const __nv_bfloat16*>(a.x);
  }

  constexpr bool kSwiGlu = OUT == GemvOut::kSwiGlu;
  const int units = kSwiGlu ? a.out : a.out / 2;
  for (int u = blockIdx.x * kWarps + warp; u < units; u += gridDim.x * kWarps) {
    const int64_t row0 = kSwiGlu ? u : 2 * u;
    const int64_t row1 = kSwiGlu ? u + a.out : 2 * u + 1;
    const uint4* w0 = reinterpret_cast<const uint4*>(a.w + row0 * in);
    const uint4* w1 = reinterpret_cast<const uint4*>(a.w + row1 * in);
    float acc0[R], acc1[R];
#pragma unroll
    for (int r = 0; r < R; ++r) acc0[r] = 0.f, acc1[r] = 0.f;
#pragma unroll 4
    for (int c = lane; c < in / 8; c += 32) {
      const uint4 wa = __ldg(w0 + c);
      const uint4 wb = __ldg(w1 + c);
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const uint4 xv = *reinterpret_cast<const uint4*>(x + r * in + 8 * c);
        acc0[r] = dot8(wa, xv, acc0[r]);
        acc1[r] = dot8(wb, xv, acc1[r]);
      }
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
      for (int o = 16; o > 0; o >>= 1) {
        acc0[r] += __shfl_xor_sync(0xffffffffu, acc0[r], o);
        acc1[r] += __shfl_xor_sync(0xffffffffu, acc1[r], o);
      }
    }
    // Every lane holds the totals; lane r writes batch row r.
#pragma unroll
    for (int r = 0; r < R; ++r) {
      if (lane != r) continue;
      const int64_t o = static_cast<int64_t>(r) * a.out;
      if constexpr (OUT == GemvOut::kF32) {
        reinterpret_cast<float2*>(static_cast<float*>(a.y) + o)[u] = make_float2(acc0[r], acc1[r]);
      } else if constexpr (OUT == GemvOut::kBf16) {
        reinterpret_cast<__nv_bfloat162*>(static_cast<__nv_bfloat16*>(a.y) + o)[u] =
            __floats2bfloat162_rn(acc0[r], acc1[r]);
      } else if constexpr (OUT == GemvOut::kAddF32) {
        float2* y = reinterpret_cast<float2*>(static_cast<float*>(a.y) + o) + u;
        float2 v = *y;
        v.x += acc0[r], v.y += acc1[r];
        *y = v;
      } else {
        const float g = acc0[r];
        static_cast<__nv_bfloat16*>(a.y)[o + u] = __float2bfloat16_rn(g / (1.f + expf(-g)) * acc1[r]);
      }
    }
  }
}

int device_sms() {
  static int sms = 0;  // one device per process (the backend's)
  if (sms == 0) {
    int dev = 0;
    CUDA_CHECK(cudaGetDevice(&dev));
    CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  }
  return sms;
}

template <int R, GemvIn IN, GemvOut OUT>
void launch(const GemvArgs& a, cudaStream_t stream) {
  size_t smem = 0;
  if constexpr (IN == GemvIn::kRmsNorm) {
    smem = size_t(R) * size_t(a.in) * sizeof(__nv_bfloat16);
    static size_t smem_set = 48 << 10;  // the default dynamic limit; raised once when needed
    if (smem > smem_set) {
      CUDA_CHECK(cudaFuncSetAttribute(gemv_kernel<R, IN, OUT>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(smem)));
      smem_set = smem;
    }
  }
  const int units = OUT == GemvOut::kSwiGlu ? a.out : a.out / 2;
  const int grid = std::min(CEIL_DIV(units, kWarps), 8 * device_sms());
  gemv_kernel<R, IN, OUT><<<grid, kThreads, smem, stream>>>(a);
  CUDA_CHECK_LAUNCH();
}

template <GemvIn IN, GemvOut OUT>
void dispatch_rows(const GemvArgs& a, cudaStream_t stream) {
  switch (a.rows) {
    case 1: return launch<1, IN, OUT>(a, stream);
    case 2: return launch<2, IN, OUT>(a, stream);
    case 4: return launch<4, IN, OUT>(a, stream);
    case 8: return launch<8, IN, OUT>(a, stream);
    default: CUDA_SHAPE_CHECK(a.rows == 1 || a.rows == 2 || a.rows == 4 || a.rows == 8);
  }
}

}  // namespace

void gemv(const GemvArgs& a, GemvIn in_mode, GemvOut out_mode, cudaStream_t stream) {
  CUDA_SHAPE_CHECK(a.rows >= 1 && a.rows <= kGemvMaxRows);
  CUDA_SHAPE_CHECK(a.in > 0 && a.in % 8 == 0 && a.out > 0 && a.out % 2 == 0);
  CUDA_SHAPE_CHECK(a.x && a.w && a.y && (in_mode != GemvIn::kRmsNorm || a.norm_w));
  CUDA_SHAPE_CHECK(in_mode != GemvIn::kRmsNorm || size_t(a.rows) * size_t(a.in) * 2 <= (200u << 10));
  // The combinations the backend uses (each one compiled for rows 1, 2, 4, 8).
  if (in_mode == GemvIn::kRmsNorm && out_mode == GemvOut::kF32) return dispatch_rows<GemvIn::kRmsNorm, GemvOut::kF32>(a, stream);
  if (in_mode == GemvIn::kRmsNorm && out_mode == GemvOut::kSwiGlu)
    return dispatch_rows<GemvIn::kRmsNorm, GemvOut::kSwiGlu>(a, stream);
  if (in_mode == GemvIn::kBf16 && out_mode == GemvOut::kAddF32) return dispatch_rows<GemvIn::kBf16, GemvOut::kAddF32>(a, stream);
  if (in_mode == GemvIn::kBf16 && out_mode == GemvOut::kF32) return dispatch_rows<GemvIn::kBf16, GemvOut::kF32>(a, stream);
  cuda_check_failed("gemv", __FILE__, __LINE__, "unsupported prologue/epilogue combination");
}

}  // namespace mpserve::backend::cuda
