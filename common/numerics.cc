#include "common/numerics.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"

namespace lowbit {
namespace {

float Epsilon(DType dtype) {
  switch (dtype) {
    case DType::kBF16: return 0.0078125f;      // 2^-7
    case DType::kF16: return 0.0009765625f;    // 2^-10
    default: return std::numeric_limits<float>::epsilon();
  }
}

// Row-major cells of a weight for the args' strategy.
struct CellLayout {
  int64_t cell_rows, groups, group_size;
};

absl::StatusOr<CellLayout> LayoutFor(const QuantArgs& args, int64_t rows, int64_t cols) {
  switch (args.strategy_or_tensor()) {
    case Strategy::kTensor: return CellLayout{1, 1, cols};
    case Strategy::kChannel: return CellLayout{rows, 1, cols};
    case Strategy::kGroup: {
      int64_t g = args.group_size.value_or(0);
      if (g <= 0) return absl::InvalidArgumentError("group strategy needs group_size > 0");
      return CellLayout{rows, (cols + g - 1) / g, g};
    }
    default:
      return absl::UnimplementedError(absl::StrCat("weight strategy ", std::string(StrategyName(args.strategy_or_tensor())),
                                                   " is not supported (use tensor, channel or group)"));
  }
}

// Calls fn(cell_index, value) for every element, cell index = cell_row * groups + group.
template <typename Fn>
void ForEachCell(std::span<const float> w, int64_t rows, int64_t cols, const CellLayout& l, Fn fn) {
  for (int64_t r = 0; r < rows; ++r) {
    int64_t cr = l.cell_rows == 1 ? 0 : r;
    for (int64_t c = 0; c < cols; ++c) fn(cr * l.groups + c / l.group_size, w[r * cols + c]);
  }
}

}  // namespace

QParam ComputeQParam(const QuantArgs& args, float min, float max, DType scale_dtype) {
  min = std::min(min, 0.0f);
  max = std::max(max, 0.0f);
  const bool fp8 = args.type == QuantType::kFloat;
  const float qmin = fp8 ? -kFp8E4M3Max : static_cast<float>(args.qmin());
  const float qmax = fp8 ? kFp8E4M3Max : static_cast<float>(args.qmax());
  const float bit_range = qmax - qmin;
  QParam q;
  if (args.symmetric) {
    float absmax = std::max(std::fabs(min), std::fabs(max));
    q.scale = RoundToDType(absmax / (bit_range / 2.0f), scale_dtype);
  } else {
    q.scale = RoundToDType((max - min) / bit_range, scale_dtype);
  }
  if (q.scale == 0.0f) q.scale = Epsilon(scale_dtype);
  if (!args.symmetric) {
    float zp = qmin - RoundToDType(min / q.scale, scale_dtype);
    q.zero_point = static_cast<int32_t>(RoundHalfEven(std::clamp(zp, qmin, qmax)));
  }
  return q;
}

float ScaledValue(float x, float scale, DType compute) { return RoundToDType(x / scale, compute); }

int32_t QuantizeInt(float x, QParam q, int qmin, int qmax, DType compute) {
  float v = ScaledValue(x, q.scale, compute) + static_cast<float>(q.zero_point);
  v = std::clamp(v, static_cast<float>(qmin), static_cast<float>(qmax));
  return static_cast<int32_t>(RoundHalfEven(v));
}

float DequantizeInt(int32_t code, QParam q) { return static_cast<float>(code - q.zero_point) * q.scale; }

uint8_t QuantizeFp8(float x, float scale, DType compute) {
  float v = std::clamp(ScaledValue(x, scale, compute), -kFp8E4M3Max, kFp8E4M3Max);
  return FloatToFp8E4M3(v);
}

float DequantizeFp8(uint8_t code, float scale) { return Fp8E4M3ToFloat(code) * scale; }

float FakeQuantize(float x, QParam q, const QuantArgs& args, DType compute) {
  if (args.type == QuantType::kFloat) return DequantizeFp8(QuantizeFp8(x, q.scale, compute), q.scale);
  return DequantizeInt(QuantizeInt(x, q, args.qmin(), args.qmax(), compute), q);
}

absl::StatusOr<WeightObserver> WeightObserverFor(const QuantArgs& args) {
  std::string name = args.observer.value_or("memoryless_minmax");
  if (name == "memoryless_minmax" || name == "minmax" || name == "static_minmax") return WeightObserver::kMinMax;
  if (name == "mse" || name == "memoryless_mse") return WeightObserver::kMse;
  return absl::UnimplementedError(absl::StrCat("weight observer '", name,
                                               "' is not supported (use minmax, static_minmax, memoryless_minmax, mse)"));
}

absl::StatusOr<WeightQParams> ObserveWeight(std::span<const float> w, int64_t rows, int64_t cols,
                                            const QuantArgs& args, DType scale_dtype) {
  if (static_cast<int64_t>(w.size()) != rows * cols) return absl::InvalidArgumentError("weight size does not match its shape");
  absl::StatusOr<CellLayout> layout = LayoutFor(args, rows, cols);
  if (!layout.ok()) return layout.status();
  absl::StatusOr<WeightObserver> observer = WeightObserverFor(args);
  if (!observer.ok()) return observer.status();
  const int64_t cells = layout->cell_rows * layout->groups;
  std::vector<float> lo(cells, std::numeric_limits<float>::infinity());
  std::vector<float> hi(cells, -std::numeric_limits<float>::infinity());
  ForEachCell(w, rows, cols, *layout, [&](int64_t cell, float v) {
    lo[cell] = std::min(lo[cell], v);
    hi[cell] = std::max(hi[cell], v);
  });

  WeightQParams qp{layout->cell_rows, layout->groups, layout->group_size,
                   std::vector<float>(cells), std::vector<int32_t>(cells)};
  auto set_cells = [&](float shrink, std::vector<QParam>& out) {
    for (int64_t c = 0; c < cells; ++c) out[c] = ComputeQParam(args, lo[c] * shrink, hi[c] * shrink, scale_dtype);
  };
  std::vector<QParam> best(cells);
  set_cells(1.0f, best);
  if (*observer == WeightObserver::kMse) {
    // llm-compressor memoryless_mse: maxshrink 0.2, grid 100, norm 2.4, patience 5.
    constexpr int kGrid = 100, kSteps = 20, kPatience = 5;
    constexpr double kNorm = 2.4;
    std::vector<double> best_err(cells, std::numeric_limits<double>::infinity());
    std::vector<QParam> candidate(cells);
    std::vector<double> err(cells);
    int stale = 0;
    for (int i = 0; i < kSteps && stale < kPatience; ++i) {
      float p = 1.0f - static_cast<float>(i) / kGrid;
      set_cells(p, candidate);
      std::fill(err.begin(), err.end(), 0.0);
      ForEachCell(w, rows, cols, *layout, [&](int64_t cell, float v) {
        err[cell] += std::pow(std::fabs(FakeQuantize(v, candidate[cell], args) - v), kNorm);
      });
      bool improved = false;
      for (int64_t c = 0; c < cells; ++c) {
        if (err[c] < best_err[c]) {
          best_err[c] = err[c];
          best[c] = candidate[c];
          improved = true;
        }
      }
      stale = improved ? 0 : stale + 1;
    }
  }
  for (int64_t c = 0; c < cells; ++c) {
    qp.scale[c] = best[c].scale;
    qp.zero_point[c] = best[c].zero_point;
  }
  return qp;
}

namespace {
int64_t GroupOf(int64_t col, const WeightQParams& qp, std::span<const int32_t> g_idx) {
  return g_idx.empty() ? (qp.groups == 1 ? 0 : col / qp.group_size) : g_idx[col];
}
}  // namespace

std::vector<int8_t> QuantizeWeightInt(std::span<const float> w, int64_t rows, int64_t cols, const QuantArgs& args,
                                      const WeightQParams& qp, std::span<const int32_t> g_idx, DType compute) {
  std::vector<int8_t> codes(rows * cols);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      codes[r * cols + c] = static_cast<int8_t>(
          QuantizeInt(w[r * cols + c], qp.at(r, GroupOf(c, qp, g_idx)), args.qmin(), args.qmax(), compute));
    }
  }
  return codes;
}

std::vector<uint8_t> QuantizeWeightFp8(std::span<const float> w, int64_t rows, int64_t cols, const WeightQParams& qp,
                                       DType compute) {
  std::vector<uint8_t> codes(rows * cols);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      codes[r * cols + c] = QuantizeFp8(w[r * cols + c], qp.at(r, GroupOf(c, qp, {})).scale, compute);
    }
  }
  return codes;
}

std::vector<float> DequantizeWeightInt(std::span<const int8_t> codes, int64_t rows, int64_t cols,
                                       const WeightQParams& qp, std::span<const int32_t> g_idx) {
  std::vector<float> w(rows * cols);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) w[r * cols + c] = DequantizeInt(codes[r * cols + c], qp.at(r, GroupOf(c, qp, g_idx)));
  }
  return w;
}

std::vector<float> DequantizeWeightFp8(std::span<const uint8_t> codes, int64_t rows, int64_t cols,
                                       const WeightQParams& qp) {
  std::vector<float> w(rows * cols);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) w[r * cols + c] = DequantizeFp8(codes[r * cols + c], qp.at(r, GroupOf(c, qp, {})).scale);
  }
  return w;
}

namespace {

// Packs element (r, c) of a [rows, cols] code matrix; `along_cols` picks the packed dimension.
std::vector<int32_t> Pack(std::span<const int8_t> codes, int64_t rows, int64_t cols, int bits, bool along_cols) {
  const int per_word = 32 / bits;
  const uint32_t offset = 1u << (bits - 1), mask = (1u << bits) - 1;
  const int64_t out_rows = along_cols ? rows : (rows + per_word - 1) / per_word;
  const int64_t out_cols = along_cols ? (cols + per_word - 1) / per_word : cols;
  std::vector<int32_t> out(out_rows * out_cols, 0);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      uint32_t v = (static_cast<uint32_t>(codes[r * cols + c] + static_cast<int32_t>(offset))) & mask;
      int64_t i = along_cols ? c : r;
      int64_t word = along_cols ? r * out_cols + i / per_word : (i / per_word) * out_cols + c;
      out[word] = static_cast<int32_t>(static_cast<uint32_t>(out[word]) | (v << (bits * (i % per_word))));
    }
  }
  return out;
}

std::vector<int8_t> Unpack(std::span<const int32_t> packed, int64_t rows, int64_t cols, int bits, bool along_cols) {
  const int per_word = 32 / bits;
  const int32_t offset = 1 << (bits - 1);
  const uint32_t mask = (1u << bits) - 1;
  const int64_t out_cols = along_cols ? (cols + per_word - 1) / per_word : cols;
  std::vector<int8_t> codes(rows * cols);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      int64_t i = along_cols ? c : r;
      int64_t word = along_cols ? r * out_cols + i / per_word : (i / per_word) * out_cols + c;
      uint32_t v = (static_cast<uint32_t>(packed[word]) >> (bits * (i % per_word))) & mask;
      codes[r * cols + c] = static_cast<int8_t>(static_cast<int32_t>(v) - offset);
    }
  }
  return codes;
}

}  // namespace

std::vector<int32_t> PackRows(std::span<const int8_t> codes, int64_t rows, int64_t cols, int bits) {
  return Pack(codes, rows, cols, bits, true);
}
std::vector<int8_t> UnpackRows(std::span<const int32_t> packed, int64_t rows, int64_t cols, int bits) {
  return Unpack(packed, rows, cols, bits, true);
}
std::vector<int32_t> PackColumns(std::span<const int8_t> codes, int64_t rows, int64_t cols, int bits) {
  return Pack(codes, rows, cols, bits, false);
}
std::vector<int8_t> UnpackColumns(std::span<const int32_t> packed, int64_t rows, int64_t cols, int bits) {
  return Unpack(packed, rows, cols, bits, false);
}

TokenQuantized QuantizePerTokenInt8(std::span<const float> x, int64_t rows, int64_t cols) {
  TokenQuantized out{std::vector<int8_t>(rows * cols), std::vector<float>(rows)};
  for (int64_t r = 0; r < rows; ++r) {
    float absmax = 0.0f;
    for (int64_t c = 0; c < cols; ++c) absmax = std::max(absmax, std::fabs(x[r * cols + c]));
    float scale = absmax > 0.0f ? absmax / 127.0f : 1.0f;
    out.scale[r] = scale;
    for (int64_t c = 0; c < cols; ++c) {
      float v = std::clamp(x[r * cols + c] / scale, -128.0f, 127.0f);
      out.codes[r * cols + c] = static_cast<int8_t>(RoundHalfEven(v));
    }
  }
  return out;
}

void ActivationObserver::Observe(std::span<const float> batch) {
  if (batch.empty()) return;
  auto [lo_it, hi_it] = std::minmax_element(batch.begin(), batch.end());
  float lo = *lo_it, hi = *hi_it;
  if (!seen_) {
    min_ = lo;
    max_ = hi;
    seen_ = true;
  } else if (ema_) {
    min_ = (1.0f - c_) * min_ + c_ * lo;
    max_ = (1.0f - c_) * max_ + c_ * hi;
  } else {
    min_ = std::min(min_, lo);
    max_ = std::max(max_, hi);
  }
}

}  // namespace lowbit
