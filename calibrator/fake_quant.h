// Activation and KV-cache fake quantization (quantize, then dequantize, in place) with the
// arithmetic vLLM's kernels run, so evaluation sees what serving will see. Each function works on
// a row-major float [rows, cols] buffer; "row" = token.
//
//   per-token int8 (dynamic_scaled_int8_quant): scale = absmax(row) / 127;
//       q = saturate_int8(round_half_even(x * (127 / absmax))); x' = q * scale.
//       A row of zeros stays zero (vLLM: 0 * inf = NaN, which the saturating convert makes 0).
//   static int8 (static_scaled_int8_quant): q = saturate_int8(round_half_even(x / s) + zp);
//       x' = (q - zp) * s.
//   FP8 E4M3 activations (dynamic_per_token_scaled_fp8_quant, dynamic/static_scaled_fp8_quant):
//       q = fp8_e4m3(clamp(x * (1 / s), -448, 448)) (round to nearest even); x' = q * s, with
//       dynamic s = max(absmax / 448, 1 / (448 * 512)) per row (per token) or over the whole
//       buffer (per tensor), and static s = the checkpoint's input_scale.
//   FP8 KV cache (the cache write): q = fp8_e4m3(clamp(x / s, -448, 448)); x' = q * s, with
//       k_scale for keys and v_scale for values.
// vLLM multiplies by a reciprocal where noted and divides elsewhere; the two differ by one ulp
// of x / s at most, which can move a value sitting on a rounding boundary to the other code.
// NaN inputs stay NaN for FP8 and become 0 for int8 (as the saturating int8 convert does).
#ifndef LOWBIT_CALIBRATOR_FAKE_QUANT_H_
#define LOWBIT_CALIBRATOR_FAKE_QUANT_H_

#include <cstdint>
#include <optional>

#include "absl/status/status.h"
#include "common/numerics.h"
#include "common/quant_args.h"

namespace lowbit {

inline constexpr float kFp8MinScalingFactor = 1.0f / (448.0f * 512.0f);

void FakeQuantPerTokenInt8(float* x, int64_t rows, int64_t cols);
void FakeQuantPerTokenFp8(float* x, int64_t rows, int64_t cols);
void FakeQuantPerTensorFp8(float* x, int64_t rows, int64_t cols);
// InvalidArgument unless scale is finite and > 0 (zero_point must be in [-128, 127]).
absl::Status FakeQuantStaticInt8(float* x, int64_t rows, int64_t cols, float scale, int32_t zero_point = 0);
absl::Status FakeQuantStaticFp8(float* x, int64_t rows, int64_t cols, float scale);
absl::Status FakeQuantKvCacheFp8(float* k, float* v, int64_t rows, int64_t cols, float k_scale, float v_scale);

// Picks the function for a Linear's input_activations args as vLLM's compressed-tensors
// schemes do: int8 dynamic token, int8 static tensor (symmetric or with a zero point), FP8
// dynamic token / tensor, FP8 static tensor. Static schemes need `static_qparam` (the
// checkpoint's input_scale / input_zero_point). Anything else is Unimplemented, naming it.
absl::Status FakeQuantActivations(const QuantArgs& input_args, std::optional<QParam> static_qparam, float* x,
                                  int64_t rows, int64_t cols);

}  // namespace lowbit

#endif  // LOWBIT_CALIBRATOR_FAKE_QUANT_H_
