#include "calibrator/fake_quant.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/dtype.h"

namespace lowbit {
namespace {

// cvt.rni.sat.s8.f32: round half to even, saturate, NaN -> 0.
float RoundSatInt8(float v) {
  if (std::isnan(v)) return 0.0f;
  return std::clamp(RoundHalfEven(v), -128.0f, 127.0f);
}

float Fp8Scaled(float scaled) {
  if (std::isnan(scaled)) return scaled;
  return Fp8E4M3ToFloat(FloatToFp8E4M3(std::clamp(scaled, -kFp8E4M3Max, kFp8E4M3Max)));
}

float AbsMax(const float* x, int64_t n) {
  float m = 0.0f;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::fabs(x[i]));  // NaN is skipped
  return m;
}

// vLLM's static and dynamic per-tensor FP8 kernels multiply by 1 / scale; its per-token kernel
// divides by the scale ("to match FBGemm"; kernel-anchors.md §6.2) — codes can differ by one step.
void Fp8MultiplyInverse(float* x, int64_t n, float scale) {
  const float inv = 1.0f / scale;
  for (int64_t i = 0; i < n; ++i) x[i] = Fp8Scaled(x[i] * inv) * scale;
}

void Fp8Divide(float* x, int64_t n, float scale) {
  for (int64_t i = 0; i < n; ++i) x[i] = Fp8Scaled(x[i] / scale) * scale;
}

absl::Status CheckScale(std::string_view what, float s) {
  if (!(s > 0.0f) || !std::isfinite(s)) {
    return absl::InvalidArgumentError(absl::StrCat(std::string(what), " is ", s, "; it must be finite and > 0"));
  }
  return absl::OkStatus();
}

}  // namespace

void FakeQuantPerTokenInt8(float* x, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r) {
    float* row = x + r * cols;
    const float absmax = AbsMax(row, cols);
    if (absmax == 0.0f) {
      for (int64_t c = 0; c < cols; ++c) row[c] = 0.0f;  // NaN * inf and 0 * inf saturate to 0
      continue;
    }
    const float scale = absmax / 127.0f;
    const float inv = 127.0f / absmax;
    for (int64_t c = 0; c < cols; ++c) row[c] = RoundSatInt8(row[c] * inv) * scale;
  }
}

void FakeQuantPerTokenFp8(float* x, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r) {
    float* row = x + r * cols;
    const float scale = std::max(AbsMax(row, cols) / kFp8E4M3Max, kFp8MinScalingFactor);
    Fp8Divide(row, cols, scale);
  }
}

void FakeQuantPerTensorFp8(float* x, int64_t rows, int64_t cols) {
  const float scale = std::max(AbsMax(x, rows * cols) / kFp8E4M3Max, kFp8MinScalingFactor);
  Fp8MultiplyInverse(x, rows * cols, scale);
}

absl::Status FakeQuantStaticInt8(float* x, int64_t rows, int64_t cols, float scale, int32_t zero_point) {
  if (absl::Status st = CheckScale("static int8 input scale", scale); !st.ok()) return st;
  if (zero_point < -128 || zero_point > 127) {
    return absl::InvalidArgumentError(absl::StrCat("static int8 zero point ", zero_point, " is outside [-128, 127]"));
  }
  const float zp = static_cast<float>(zero_point);
  for (int64_t i = 0; i < rows * cols; ++i) {
    float v = x[i] / scale;
    float q = std::isnan(v) ? zp : std::clamp(RoundHalfEven(v) + zp, -128.0f, 127.0f);
    x[i] = (q - zp) * scale;
  }
  return absl::OkStatus();
}

absl::Status FakeQuantStaticFp8(float* x, int64_t rows, int64_t cols, float scale) {
  if (absl::Status st = CheckScale("static FP8 input scale", scale); !st.ok()) return st;
  Fp8MultiplyInverse(x, rows * cols, scale);
  return absl::OkStatus();
}

absl::Status FakeQuantKvCacheFp8(float* k, float* v, int64_t rows, int64_t cols, float k_scale, float v_scale) {
  if (absl::Status st = CheckScale("k_scale", k_scale); !st.ok()) return st;
  if (absl::Status st = CheckScale("v_scale", v_scale); !st.ok()) return st;
  for (int64_t i = 0; i < rows * cols; ++i) {
    k[i] = Fp8Scaled(k[i] / k_scale) * k_scale;
    v[i] = Fp8Scaled(v[i] / v_scale) * v_scale;
  }
  return absl::OkStatus();
}

absl::Status FakeQuantActivations(const QuantArgs& a, std::optional<QParam> static_qparam, float* x, int64_t rows,
                                  int64_t cols) {
  const Strategy strategy = a.strategy_or_tensor();
  const bool dynamic = a.dynamic == Dynamic::kDynamic;
  auto need_static = [&]() -> absl::Status {
    if (!static_qparam) return absl::InvalidArgumentError("static activation quantization needs the input_scale");
    return absl::OkStatus();
  };
  if (a.type == QuantType::kInt && a.num_bits == 8) {
    if (dynamic && strategy == Strategy::kToken && a.symmetric) {
      FakeQuantPerTokenInt8(x, rows, cols);
      return absl::OkStatus();
    }
    if (a.dynamic == Dynamic::kStatic && strategy == Strategy::kTensor) {
      if (absl::Status st = need_static(); !st.ok()) return st;
      return FakeQuantStaticInt8(x, rows, cols, static_qparam->scale, a.symmetric ? 0 : static_qparam->zero_point);
    }
  } else if (a.type == QuantType::kFloat && a.num_bits == 8 && a.symmetric) {
    if (dynamic && strategy == Strategy::kToken) {
      FakeQuantPerTokenFp8(x, rows, cols);
      return absl::OkStatus();
    }
    if (dynamic && strategy == Strategy::kTensor) {
      FakeQuantPerTensorFp8(x, rows, cols);
      return absl::OkStatus();
    }
    if (a.dynamic == Dynamic::kStatic && strategy == Strategy::kTensor) {
      if (absl::Status st = need_static(); !st.ok()) return st;
      return FakeQuantStaticFp8(x, rows, cols, static_qparam->scale);
    }
  }
  return absl::UnimplementedError(absl::StrCat(
      "fake quantization of activations with ", a.type == QuantType::kInt ? "int" : "float", a.num_bits,
      a.symmetric ? " symmetric" : " asymmetric", a.dynamic == Dynamic::kStatic ? " static" : " dynamic",
      " strategy ", std::string(StrategyName(strategy)),
      " is not supported (int8 dynamic token, int8 static tensor, FP8 dynamic token/tensor, FP8 static tensor)"));
}

}  // namespace lowbit
