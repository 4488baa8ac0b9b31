// The CPU reference of every kernel op: plain loops over the checkpoint-form weights, exact
// integer math where the op is integer (W8A8: int32; FP8: products and sums exact in int64,
// since every E4M3 value is a multiple of 2^-9), f64 sums for W4A16. This is the oracle the
// backend-ops test compares every backend with (design.md §4). Host memory only.
#ifndef LOWBIT_KERNELS_REFERENCE_H_
#define LOWBIT_KERNELS_REFERENCE_H_

#include <algorithm>
#include <bit>
#include <cstdint>
#include <limits>

#include "kernels/backend.h"

namespace lowbit::kernels::ref {

// Activation quantization with the arithmetic of vLLM's kernels (shared/reference/
// kernel-anchors.md §6), so that codes match bit for bit:
//   int8 per token: s = absmax / 127, q = rne_sat(x · (127 / absmax)). A row whose s is 0 or
//     whose 127 / absmax overflows (all zero, or an f32 or bf16 row with absmax < ≈ 3.7e-37) gets s = 1
//     and codes 0 (vLLM: s = 0 and codes from x · inf; the GEMM output is 0 either way).
//   FP8 per token: s = max(absmax / 448, 1 / (448 · 512)), q = e4m3(clamp(x / s)).
//   FP8 static per tensor: q = e4m3(clamp(x · (1 / s))).
// Shared with the CPU fast paths; quantize.cu does the same on the device.
struct Int8Row {
  float scale;  // what the GEMM multiplies back
  float mult;   // what x is multiplied by
};
inline Int8Row Int8PerTokenRow(float absmax) {
  const float s = absmax / 127.0f, mult = 127.0f / absmax;
  if (!(s > 0.0f) || !(mult <= std::numeric_limits<float>::max())) return {1.0f, 0.0f};
  return {s, mult};
}
inline float Fp8PerTokenScale(float absmax) { return std::max(absmax / 448.0f, kFp8MinPerTokenScale); }

// What the per-token quantizers write for a row holding a NaN or an infinity: scale NaN
// (kNonFiniteRowScaleBits), every code 0 (backend.h). Shared with the CPU fast paths.
template <class Code>
inline void NonFiniteRow(int64_t k, Code* q, float* scale) {
  *scale = std::bit_cast<float>(kNonFiniteRowScaleBits);
  std::fill(q, q + k, Code{0});
}

float LoadFloat(DType dtype, const void* p, int64_t i);
// Rounds v to dtype (RNE) and stores it.
void StoreFloat(DType dtype, void* p, int64_t i, float v);

void QuantizeInt8PerToken(DType x_dtype, const void* x, int64_t m, int64_t k, int8_t* q, float* scale);
void QuantizeFp8PerTensor(DType x_dtype, const void* x, int64_t m, int64_t k, float scale, uint8_t* q);
void QuantizeFp8PerToken(DType x_dtype, const void* x, int64_t m, int64_t k, uint8_t* q, float* scale);

// Each GEMM also returns, when abs_sum is not null, S[m,n] = |scales| · Σ_k |X·W| (f64 → f32),
// the magnitude the float tolerances are stated against.
void GemmW8A8(int64_t m, const int8_t* xq, const float* x_scale, int64_t x_scale_count, const Int8WeightSource& w,
              const float* bias, DType y_dtype, void* y, int32_t* acc_out = nullptr);
void GemmFp8(int64_t m, const uint8_t* xq, const float* x_scale, int64_t x_scale_count, const Fp8WeightSource& w,
             const float* bias, DType y_dtype, void* y, float* abs_sum = nullptr);
void GemmW4A16(int64_t m, DType x_dtype, const void* x, const Int4WeightSource& w, const float* bias, void* y,
               float* abs_sum = nullptr);

}  // namespace lowbit::kernels::ref

#endif  // LOWBIT_KERNELS_REFERENCE_H_
