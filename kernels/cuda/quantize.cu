// Activation quantization kernels: one 256-thread block per row; the row max is a block
// reduction; x / scale is an IEEE division (__fdiv_rn), conversions round to nearest even and
// saturate — the same f32 operations as the CPU reference, so codes and scales are bit-exact.
// f16/bf16 rows of up to 16384 elements take the vectorized kernel (one read of X, 16-byte loads).
// A per-token row holding a NaN or an infinity gets scale NaN and codes 0 (backend.h).
#include "kernels/backend.h"
#include "kernels/cuda/common.cuh"

namespace lowbit::kernels::cuda {
namespace {

constexpr int kThreads = 256;

// |v| for the row maximum, +inf for a NaN or an infinity (fmaxf would skip a NaN): a row whose
// maximum is +inf is the non-finite row.
__device__ __forceinline__ float AbsForMax(float v) {
  const float a = fabsf(v);
  return a <= 3.402823466e38f ? a : __int_as_float(0x7f800000);
}
__device__ __forceinline__ bool FiniteMax(float absmax) { return absmax <= 3.402823466e38f; }
// The arithmetic of vLLM's kernels, as kernels/reference.h states it: int8 per token multiplies
// by 127 / absmax (a row whose scale is 0 or whose multiplier overflows: scale 1, multiplier 0);
// FP8 per token divides by max(absmax / 448, 1 / (448 · 512)); FP8 static multiplies by 1 / scale.
struct Int8Row {
  float scale, mult;
};
__device__ __forceinline__ Int8Row Int8RowOf(float absmax) {
  if (!FiniteMax(absmax)) return {__uint_as_float(kNonFiniteRowScaleBits), 0.0f};
  const float s = __fdiv_rn(absmax, 127.0f), mult = __fdiv_rn(127.0f, absmax);
  if (!(s > 0.0f) || !(mult <= 3.402823466e38f)) return {1.0f, 0.0f};
  return {s, mult};
}
__device__ __forceinline__ float Fp8RowScale(float absmax) {
  if (!FiniteMax(absmax)) return __uint_as_float(kNonFiniteRowScaleBits);
  return fmaxf(__fdiv_rn(absmax, 448.0f), kFp8MinPerTokenScale);
}

__device__ float BlockMax(float v) {
  __shared__ float red[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  if ((threadIdx.x & 31) == 0) red[threadIdx.x / 32] = v;
  __syncthreads();
  if (threadIdx.x < 32) {
    v = threadIdx.x < kThreads / 32 ? red[threadIdx.x] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    if (threadIdx.x == 0) red[0] = v;
  }
  __syncthreads();
  float r = red[0];
  __syncthreads();
  return r;
}

__global__ void QuantInt8PerTokenKernel(int xt, const void* x, int64_t k, int8_t* q, float* scale) {
  const int64_t row = blockIdx.x;
  float mx = 0.0f;
  for (int64_t c = threadIdx.x; c < k; c += kThreads) mx = fmaxf(mx, AbsForMax(LoadElem(xt, x, row * k + c)));
  const float absmax = BlockMax(mx);
  const Int8Row r = Int8RowOf(absmax);
  const bool finite = FiniteMax(absmax);
  if (threadIdx.x == 0) scale[row] = r.scale;
  for (int64_t c = threadIdx.x; c < k; c += kThreads) {
    float v = __fmul_rn(LoadElem(xt, x, row * k + c), r.mult);
    v = fminf(fmaxf(v, -128.0f), 127.0f);
    q[row * k + c] = finite ? static_cast<int8_t>(__float2int_rn(v)) : int8_t{0};
  }
}

__global__ void QuantFp8Kernel(int xt, const void* x, int64_t k, float static_scale, uint8_t* q, float* scale_out) {
  const int64_t row = blockIdx.x;
  const bool per_token = scale_out != nullptr;
  float f = __fdiv_rn(1.0f, static_scale);  // static: x · (1 / scale)
  bool finite = true;
  if (per_token) {  // x / scale
    float mx = 0.0f;
    for (int64_t c = threadIdx.x; c < k; c += kThreads) mx = fmaxf(mx, AbsForMax(LoadElem(xt, x, row * k + c)));
    const float absmax = BlockMax(mx);
    f = Fp8RowScale(absmax);
    finite = FiniteMax(absmax);
    if (threadIdx.x == 0) scale_out[row] = f;
  }
  for (int64_t c = threadIdx.x; c < k; c += kThreads) {
    // ScaledFp8 saturates to ±448 (the reference's clamp) and keeps NaN a NaN with its sign (a
    // clamp with fminf / fmaxf would turn it into a finite code).
    const int64_t i = row * k + c;
    q[i] = finite ? ScaledFp8(LoadElem(xt, x, i), SignBitOf(xt, x, i), f, per_token) : uint8_t{0};
  }
}

// The vectorized form for f16/bf16 rows with K % 8 == 0 and K ≤ kVecMaxK: each thread loads its
// 16-byte pieces once, keeps them in registers for the quantizing pass (one read of X, not two),
// and stores 8 codes at a time. The same f32 operations per element as the kernels above.
constexpr int kVecPerThread = 8;
constexpr int64_t kVecMaxK = int64_t{kThreads} * 8 * kVecPerThread;  // 16384

template <class T>
__device__ __forceinline__ float ToF32(T v);
template <>
__device__ __forceinline__ float ToF32(__half v) {
  return __half2float(v);
}
template <>
__device__ __forceinline__ float ToF32(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

// kind: 0 = int8 per token, 1 = FP8 per token, 2 = FP8 with a static scale.
template <class T, int kKind>
__global__ void __launch_bounds__(kThreads) QuantRowVecKernel(const T* __restrict__ x, int64_t k, float static_scale,
                                                              uint8_t* __restrict__ q, float* __restrict__ scale_out) {
  const int64_t row = blockIdx.x;
  const int nvec = static_cast<int>(k / 8);
  const int4* xr = reinterpret_cast<const int4*>(x + row * k);
  int4 v[kVecPerThread];
  float mx = 0.0f;
#pragma unroll
  for (int i = 0; i < kVecPerThread; ++i) {
    const int idx = threadIdx.x + i * kThreads;
    if (idx < nvec) {
      v[i] = __ldg(xr + idx);
      const T* e = reinterpret_cast<const T*>(&v[i]);
#pragma unroll
      for (int j = 0; j < 8; ++j) mx = fmaxf(mx, AbsForMax(ToF32(e[j])));
    }
  }
  // f: the multiplier (int8: 127 / absmax; static FP8: 1 / scale) or the divisor (FP8 per token).
  float f = __fdiv_rn(1.0f, static_scale);
  bool finite = true;
  if (kKind != 2) {
    const float absmax = BlockMax(mx);
    float s;
    if (kKind == 0) {
      const Int8Row r = Int8RowOf(absmax);
      s = r.scale;
      f = r.mult;
    } else {
      s = f = Fp8RowScale(absmax);
    }
    finite = FiniteMax(absmax);
    if (threadIdx.x == 0) scale_out[row] = s;
  }
  uint2* qr = reinterpret_cast<uint2*>(q + row * k);
#pragma unroll
  for (int i = 0; i < kVecPerThread; ++i) {
    const int idx = threadIdx.x + i * kThreads;
    if (idx >= nvec) continue;
    const T* e = reinterpret_cast<const T*>(&v[i]);
    uint32_t packed[2] = {0, 0};
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const float xv = ToF32(e[j]);
      uint32_t code;
      if (kKind == 0) {
        const float r = fminf(fmaxf(__fmul_rn(xv, f), -128.0f), 127.0f);
        code = static_cast<uint8_t>(static_cast<int8_t>(__float2int_rn(r)));
      } else {  // saturating, a NaN's sign kept (QuantFp8Kernel)
        const bool negative = (reinterpret_cast<const uint16_t*>(e)[j] >> 15) != 0;
        code = ScaledFp8(xv, negative, f, kKind == 1);
      }
      packed[j / 4] |= code << (8 * (j % 4));
    }
    qr[idx] = finite ? make_uint2(packed[0], packed[1]) : make_uint2(0, 0);
  }
}

bool VecOk(int xt, const void* x, int64_t k, const void* q) {
  return (xt == kF16 || xt == kBF16) && k % 8 == 0 && k <= kVecMaxK && reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(q) % 8 == 0;
}

template <int kKind>
void LaunchVec(int xt, const void* x, int64_t m, int64_t k, float static_scale, uint8_t* q, float* scale_out,
               cudaStream_t s) {
  if (xt == kF16)
    QuantRowVecKernel<__half, kKind>
        <<<static_cast<unsigned>(m), kThreads, 0, s>>>(static_cast<const __half*>(x), k, static_scale, q, scale_out);
  else
    QuantRowVecKernel<__nv_bfloat16, kKind><<<static_cast<unsigned>(m), kThreads, 0, s>>>(
        static_cast<const __nv_bfloat16*>(x), k, static_scale, q, scale_out);
}

}  // namespace

Status LaunchQuantInt8PerToken(int xt, const void* x, int64_t m, int64_t k, int8_t* q, float* scale, cudaStream_t s) {
  if (VecOk(xt, x, k, q))
    LaunchVec<0>(xt, x, m, k, 1.0f, reinterpret_cast<uint8_t*>(q), scale, s);
  else
    QuantInt8PerTokenKernel<<<static_cast<unsigned>(m), kThreads, 0, s>>>(xt, x, k, q, scale);
  return CudaStatus(cudaGetLastError(), "QuantizeInt8PerToken launch");
}

Status LaunchQuantFp8(int xt, const void* x, int64_t m, int64_t k, const float*, float static_scale, uint8_t* q,
                      float* scale_out, cudaStream_t s) {
  if (VecOk(xt, x, k, q)) {
    if (scale_out != nullptr)
      LaunchVec<1>(xt, x, m, k, 1.0f, q, scale_out, s);
    else
      LaunchVec<2>(xt, x, m, k, static_scale, q, nullptr, s);
  } else {
    QuantFp8Kernel<<<static_cast<unsigned>(m), kThreads, 0, s>>>(xt, x, k, static_scale, q, scale_out);
  }
  return CudaStatus(cudaGetLastError(), "QuantizeFp8 launch");
}

}  // namespace lowbit::kernels::cuda
