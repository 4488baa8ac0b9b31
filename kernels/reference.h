// The CPU reference of every kernel op: plain loops over the checkpoint-form weights, exact
// integer math where the op is integer (W8A8: int32; FP8: products and sums exact in int64,
// since every E4M3 value is a multiple of 2^-9), f64 sums for W4A16. This is the oracle the
// backend-ops test compares every backend with (design.md §4). Host memory only.
#ifndef LOWBIT_KERNELS_REFERENCE_H_
#define LOWBIT_KERNELS_REFERENCE_H_

#include <algorithm>
#include <bit>
#include <cstdint>

#include "kernels/backend.h"

namespace lowbit::kernels::ref {

// The per-token scale of a finite row: absmax / qmax (127 or 448), or 1 when that is 0 — an
// all-zero row, or an f32 row so small that the division underflows (absmax < qmax · 2^-149),
// whose codes are then 0 as a zero row's. Shared with the CPU fast paths (quantize.cu: the same).
inline float PerTokenScale(float absmax, float qmax) {
  const float s = absmax / qmax;
  return s > 0.0f ? s : 1.0f;
}

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
