// Reference quantization numerics — the oracle every kernel and algorithm is tested against.
// Follows compressed-tensors' calculate_qparams / quantize / dequantize and llm-compressor's
// observers (shared/reference/llm-compressor-algorithms.md §2):
//   * the observed range always includes 0: min = min(min, 0), max = max(max, 0);
//   * symmetric: scale = absmax / ((qmax - qmin) / 2)  (int4: /7.5, int8: /127.5, FP8: /448);
//   * asymmetric int: scale = (max - min) / (qmax - qmin), zp = round(clamp(qmin - min/scale));
//   * scales are rounded to the scale dtype (the model dtype) before use; a zero scale becomes
//     that dtype's epsilon;
//   * int: q = round_half_even(clamp(x / scale + zp, qmin, qmax)); x' = (q - zp) * scale;
//   * FP8: q = fp8_e4m3(clamp(x / scale, -448, 448)) (round to nearest even); x' = q * scale.
#ifndef LOWBIT_COMMON_NUMERICS_H_
#define LOWBIT_COMMON_NUMERICS_H_

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "common/dtype.h"
#include "common/quant_args.h"

namespace lowbit {

struct QParam {
  float scale = 1.0f;
  int32_t zero_point = 0;
};

// compressed-tensors calculate_qparams for one cell with observed range [min, max].
QParam ComputeQParam(const QuantArgs& args, float min, float max, DType scale_dtype);

// x / scale, rounded to `compute` (F32 for float32 math; BF16/F16 to match torch running the
// division in the model dtype, as compressed-tensors does when it compresses bf16 weights).
float ScaledValue(float x, float scale, DType compute);
int32_t QuantizeInt(float x, QParam q, int qmin, int qmax, DType compute = DType::kF32);
float DequantizeInt(int32_t code, QParam q);
uint8_t QuantizeFp8(float x, float scale, DType compute = DType::kF32);
float DequantizeFp8(uint8_t code, float scale);
// One value through quantize + dequantize with `args` (int or FP8).
float FakeQuantize(float x, QParam q, const QuantArgs& args, DType compute = DType::kF32);

// Round half to even, as torch.round does.
inline float RoundHalfEven(float x);

// Quantization parameters of a [rows, cols] weight: one cell per (row, group) with
// `groups` = 1 (channel), ceil(cols / group_size) (group), or one cell overall (tensor,
// rows_of_cells = 1). scale/zero_point are [cell_rows, groups], row-major.
struct WeightQParams {
  int64_t cell_rows = 0;
  int64_t groups = 0;
  int64_t group_size = 0;  // columns per group (cols for tensor / channel)
  std::vector<float> scale;
  std::vector<int32_t> zero_point;
  QParam at(int64_t row, int64_t group) const {
    int64_t r = cell_rows == 1 ? 0 : row;
    return {scale[r * groups + group], zero_point[r * groups + group]};
  }
};

enum class WeightObserver { kMinMax, kMse };
// Observer name from a QuantArgs ("memoryless_minmax", "minmax", "static_minmax" -> min-max;
// "mse", "memoryless_mse" -> MSE). Unknown names are an error.
absl::StatusOr<WeightObserver> WeightObserverFor(const QuantArgs& args);

// Observes a [rows, cols] float weight (memoryless, as llm-compressor forces for weights) and
// returns its qparams for tensor, channel or group strategy. MSE: grid search of shrink
// factors p = 1 - i/100, i < 20, error sum |fq(x) - x|^2.4 per cell, patience 5.
absl::StatusOr<WeightQParams> ObserveWeight(std::span<const float> w, int64_t rows, int64_t cols,
                                            const QuantArgs& args, DType scale_dtype);

// Codes of a [rows, cols] weight under `qp`. Column k uses group g_idx[k] when g_idx is
// given (activation order "group"), else k / group_size. Int codes are int8 values in
// [qmin, qmax]; FP8 codes are E4M3 bytes.
std::vector<int8_t> QuantizeWeightInt(std::span<const float> w, int64_t rows, int64_t cols,
                                      const QuantArgs& args, const WeightQParams& qp,
                                      std::span<const int32_t> g_idx = {},
                                      DType compute = DType::kF32);
std::vector<uint8_t> QuantizeWeightFp8(std::span<const float> w, int64_t rows, int64_t cols,
                                       const WeightQParams& qp, DType compute = DType::kF32);
std::vector<float> DequantizeWeightInt(std::span<const int8_t> codes, int64_t rows, int64_t cols,
                                       const WeightQParams& qp, std::span<const int32_t> g_idx = {});
std::vector<float> DequantizeWeightFp8(std::span<const uint8_t> codes, int64_t rows, int64_t cols,
                                       const WeightQParams& qp);

// compressed-tensors pack_to_int32: signed `bits`-bit codes + 2^(bits-1), 32/bits per int32
// word, first value in the lowest bits, the packed dimension zero-padded.
// PackRows packs along columns: [rows, cols] -> [rows, ceil(cols * bits / 32)] (weights).
// PackColumns packs along rows: [rows, cols] -> [ceil(rows * bits / 32), cols] (zero points).
std::vector<int32_t> PackRows(std::span<const int8_t> codes, int64_t rows, int64_t cols, int bits);
std::vector<int8_t> UnpackRows(std::span<const int32_t> packed, int64_t rows, int64_t cols, int bits);
std::vector<int32_t> PackColumns(std::span<const int8_t> codes, int64_t rows, int64_t cols, int bits);
std::vector<int8_t> UnpackColumns(std::span<const int32_t> packed, int64_t rows, int64_t cols, int bits);

// Dynamic per-token int8 activation quantization as vLLM runs it: scale = absmax(row) / 127,
// q = round_half_even(clamp(x / scale, -128, 127)). An all-zero row gets scale 1.
struct TokenQuantized {
  std::vector<int8_t> codes;  // [rows, cols]
  std::vector<float> scale;   // [rows]
};
TokenQuantized QuantizePerTokenInt8(std::span<const float> x, int64_t rows, int64_t cols);

// Static activation range observer (llm-compressor "static_minmax": running global min/max)
// and the EMA variant ("minmax": m <- (1 - c) m + c m_batch, first batch initialises).
class ActivationObserver {
 public:
  explicit ActivationObserver(bool ema = false, float averaging_constant = 0.01f)
      : ema_(ema), c_(averaging_constant) {}
  void Observe(std::span<const float> batch);
  bool empty() const { return !seen_; }
  float min() const { return min_; }
  float max() const { return max_; }

 private:
  bool ema_;
  float c_;
  bool seen_ = false;
  float min_ = 0.0f, max_ = 0.0f;
};

inline float RoundHalfEven(float x) { return __builtin_nearbyintf(x); }

}  // namespace lowbit

#endif  // LOWBIT_COMMON_NUMERICS_H_
