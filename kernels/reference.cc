#include "kernels/reference.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "common/dtype.h"
#include "kernels/validate.h"

namespace lowbit::kernels::ref {

float LoadFloat(DType dtype, const void* p, int64_t i) {
  switch (dtype) {
    case DType::kF32:
      return static_cast<const float*>(p)[i];
    case DType::kF16:
      return Fp16ToFloat(static_cast<const uint16_t*>(p)[i]);
    case DType::kBF16:
      return Bf16ToFloat(static_cast<const uint16_t*>(p)[i]);
    default:
      return 0.0f;
  }
}

void StoreFloat(DType dtype, void* p, int64_t i, float v) {
  switch (dtype) {
    case DType::kF32:
      static_cast<float*>(p)[i] = v;
      break;
    case DType::kF16:
      static_cast<uint16_t*>(p)[i] = FloatToFp16(v);
      break;
    case DType::kBF16:
      static_cast<uint16_t*>(p)[i] = FloatToBf16(v);
      break;
    default:
      break;
  }
}

namespace {

// +inf when the row holds a NaN or an infinity (the per-token quantizers' non-finite row).
float RowAbsMax(DType dt, const void* x, int64_t row, int64_t k) {
  float a = 0.0f;
  for (int64_t c = 0; c < k; ++c) {
    const float v = std::fabs(LoadFloat(dt, x, row * k + c));
    if (!std::isfinite(v)) return std::numeric_limits<float>::infinity();
    a = std::max(a, v);
  }
  return a;
}

// E4M3 has no infinities; its NaN codes are 0x7F and 0xFF.
bool IsFp8Nan(uint8_t code) { return (code & 0x7F) == 0x7F; }

// Exact value of a finite E4M3 code times 2^9 (every finite E4M3 value is a multiple of 2^-9); 0
// for a NaN code, which the GEMM tracks on its own.
int64_t Fp8Times512(uint8_t code) { return IsFp8Nan(code) ? 0 : static_cast<int64_t>(Fp8E4M3ToFloat(code) * 512.0f); }

}  // namespace

void QuantizeInt8PerToken(DType x_dtype, const void* x, int64_t m, int64_t k, int8_t* q, float* scale) {
  for (int64_t r = 0; r < m; ++r) {
    float absmax = RowAbsMax(x_dtype, x, r, k);
    if (!std::isfinite(absmax)) {
      NonFiniteRow(k, q + r * k, scale + r);
      continue;
    }
    const Int8Row row = Int8PerTokenRow(absmax);
    scale[r] = row.scale;
    for (int64_t c = 0; c < k; ++c) {
      float v = std::clamp(LoadFloat(x_dtype, x, r * k + c) * row.mult, -128.0f, 127.0f);
      q[r * k + c] = static_cast<int8_t>(std::nearbyint(v));
    }
  }
}

void QuantizeFp8PerTensor(DType x_dtype, const void* x, int64_t m, int64_t k, float scale, uint8_t* q) {
  const float inv = 1.0f / scale;
  for (int64_t i = 0; i < m * k; ++i)
    q[i] = FloatToFp8E4M3(std::clamp(LoadFloat(x_dtype, x, i) * inv, -kFp8E4M3Max, kFp8E4M3Max));
}

void QuantizeFp8PerToken(DType x_dtype, const void* x, int64_t m, int64_t k, uint8_t* q, float* scale) {
  for (int64_t r = 0; r < m; ++r) {
    float absmax = RowAbsMax(x_dtype, x, r, k);
    if (!std::isfinite(absmax)) {
      NonFiniteRow(k, q + r * k, scale + r);
      continue;
    }
    float s = Fp8PerTokenScale(absmax);
    scale[r] = s;
    for (int64_t c = 0; c < k; ++c)
      q[r * k + c] = FloatToFp8E4M3(std::clamp(LoadFloat(x_dtype, x, r * k + c) / s, -kFp8E4M3Max, kFp8E4M3Max));
  }
}

void GemmW8A8(int64_t m, const int8_t* xq, const float* x_scale, int64_t x_scale_count, const Int8WeightSource& w,
              const float* bias, DType y_dtype, void* y, int32_t* acc_out) {
  const std::vector<float> ws = ScalesToFloat(w.scale);
  const int64_t n = w.n, k = w.k;
  for (int64_t r = 0; r < m; ++r) {
    const float as = x_scale[x_scale_count == 1 ? 0 : r];
    for (int64_t c = 0; c < n; ++c) {
      int32_t acc = 0;
      for (int64_t i = 0; i < k; ++i)
        acc += static_cast<int32_t>(xq[r * k + i]) * static_cast<int32_t>(w.weight[c * k + i]);
      if (acc_out) acc_out[r * n + c] = acc;
      float v = static_cast<float>(acc) * ws[ws.size() == 1 ? 0 : c];
      v = v * as;
      if (bias) v = v + bias[c];
      StoreFloat(y_dtype, y, r * n + c, v);
    }
  }
}

void GemmFp8(int64_t m, const uint8_t* xq, const float* x_scale, int64_t x_scale_count, const Fp8WeightSource& w,
             const float* bias, DType y_dtype, void* y, float* abs_sum) {
  const std::vector<float> ws = ScalesToFloat(w.scale);
  const int64_t n = w.n, k = w.k;
  int64_t lut[256];
  for (int i = 0; i < 256; ++i) lut[i] = Fp8Times512(static_cast<uint8_t>(i));
  for (int64_t c = 0; c < n; ++c) {
    const uint8_t* wr = w.weight + c * k;
    for (int64_t r = 0; r < m; ++r) {
      const double as = x_scale[x_scale_count == 1 ? 0 : r];
      const uint8_t* xr = xq + r * k;
      int64_t acc = 0, aacc = 0;  // |terms| ≤ 229376² < 2^36: K up to 2^27 terms fit
      bool nan = false;           // a NaN code makes the dot product NaN, as in float arithmetic
      for (int64_t i = 0; i < k; ++i) {
        const int64_t p = lut[xr[i]] * lut[wr[i]];
        acc += p;
        aacc += p < 0 ? -p : p;
        nan |= IsFp8Nan(xr[i]) || IsFp8Nan(wr[i]);
      }
      const double s = as * ws[ws.size() == 1 ? 0 : c] / (512.0 * 512.0);
      double v = nan ? std::numeric_limits<double>::quiet_NaN() : static_cast<double>(acc) * s;
      if (bias) v += bias[c];
      StoreFloat(y_dtype, y, r * n + c, static_cast<float>(v));
      if (abs_sum) abs_sum[r * n + c] = static_cast<float>(static_cast<double>(aacc) * std::fabs(s));
    }
  }
}

void GemmW4A16(int64_t m, DType x_dtype, const void* x, const Int4WeightSource& w, const float* bias, void* y,
               float* abs_sum) {
  const int64_t n = w.n, k = w.k;
  const int64_t gs = Int4GroupSize(k, w.group_size), groups = Int4Groups(k, w.group_size);
  const std::vector<float> sc = ScalesToFloat(w.scale);
  const int64_t words = (k + 7) / 8;
  std::vector<double> xf(m * k);
  for (int64_t i = 0; i < m * k; ++i) xf[i] = LoadFloat(x_dtype, x, i);
  std::vector<double> wd(k);
  for (int64_t c = 0; c < n; ++c) {
    // Row c of the dequantized weight, rounded to the activation dtype as the GPU kernels do
    // before the MMA.
    for (int64_t i = 0; i < k; ++i) {
      const int64_t g = w.g_idx ? w.g_idx[i] : i / gs;
      const uint32_t word = static_cast<uint32_t>(w.weight_packed[c * words + i / 8]);
      const int32_t q = static_cast<int32_t>((word >> (4 * (i % 8))) & 15u) - 8;
      int32_t z = 0;
      if (w.zero_point_packed) {
        const uint32_t zw = static_cast<uint32_t>(w.zero_point_packed[(c / 8) * groups + g]);
        z = static_cast<int32_t>((zw >> (4 * (c % 8))) & 15u) - 8;
      }
      wd[i] = RoundToDType(static_cast<float>(q - z) * sc[c * groups + g], x_dtype);
    }
    for (int64_t r = 0; r < m; ++r) {
      // Products are exact (two 16-bit floats); four f64 partial sums (the order does not matter
      // at f64 precision for a 16-bit output, and it keeps the loop off the add latency chain).
      double acc4[4] = {0, 0, 0, 0}, aacc4[4] = {0, 0, 0, 0};
      const double* xr = xf.data() + r * k;
      int64_t i = 0;
      for (; i + 4 <= k; i += 4)
        for (int j = 0; j < 4; ++j) {
          const double p = xr[i + j] * wd[i + j];
          acc4[j] += p;
          aacc4[j] += std::fabs(p);
        }
      for (; i < k; ++i) {
        const double p = xr[i] * wd[i];
        acc4[0] += p;
        aacc4[0] += std::fabs(p);
      }
      double acc = (acc4[0] + acc4[1]) + (acc4[2] + acc4[3]);
      const double aacc = (aacc4[0] + aacc4[1]) + (aacc4[2] + aacc4[3]);
      if (bias) acc += bias[c];
      StoreFloat(x_dtype, y, r * n + c, static_cast<float>(acc));
      if (abs_sum) abs_sum[r * n + c] = static_cast<float>(aacc);
    }
  }
}

}  // namespace lowbit::kernels::ref
