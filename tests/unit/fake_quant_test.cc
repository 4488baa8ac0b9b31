// Activation / KV-cache fake quantization: hand-checked values, saturation, error bounds and
// idempotence (calibrator/fake_quant.h states the vLLM arithmetic).
#include "calibrator/fake_quant.h"

#include <cmath>
#include <random>
#include <vector>

#include "common/dtype.h"
#include "gtest/gtest.h"

namespace lowbit {
namespace {

TEST(PerTokenInt8, HandChecked) {
  // Row 0: absmax 127 -> scale 1: -63.5 -> -64 and 0.5 -> 0, 2.5 -> 2, -1.5 -> -2 (half to even).
  // Row 1: absmax 254 -> scale 2, x * 0.5: 1 -> 0.5 -> 0, 3 -> 1.5 -> 2 -> 4, 5 -> 2.5 -> 2 -> 4.
  // Row 2: zeros stay zeros.
  std::vector<float> x = {127, -63.5f, 0.5f, 2.5f, -1.5f, 254, 1, 3, 5, -254, 0, 0, 0, 0, 0};
  FakeQuantPerTokenInt8(x.data(), 3, 5);
  EXPECT_EQ(x, (std::vector<float>{127, -64, 0, 2, -2, 254, 0, 4, 4, -254, 0, 0, 0, 0, 0}));
}

TEST(PerTokenInt8, ErrorWithinHalfStepAndIdempotent) {
  std::mt19937 rng(5);
  std::normal_distribution<float> n(0.0f, 1.0f);
  const int64_t rows = 16, cols = 257;
  std::vector<float> x(rows * cols);
  for (size_t i = 0; i < x.size(); ++i) x[i] = n(rng) * (i % 37 == 0 ? 30.0f : 1.0f);
  std::vector<float> q = x;
  FakeQuantPerTokenInt8(q.data(), rows, cols);
  for (int64_t r = 0; r < rows; ++r) {
    float absmax = 0;
    for (int64_t c = 0; c < cols; ++c) absmax = std::max(absmax, std::fabs(x[r * cols + c]));
    const float scale = absmax / 127.0f;
    for (int64_t c = 0; c < cols; ++c) {
      float code = q[r * cols + c] / scale;
      EXPECT_NEAR(code, std::round(code), 1e-3f);                        // on the grid
      EXPECT_LE(std::fabs(q[r * cols + c] - x[r * cols + c]), scale * 0.5f * 1.0001f);
    }
  }
  std::vector<float> q2 = q;
  FakeQuantPerTokenInt8(q2.data(), rows, cols);
  for (size_t i = 0; i < q.size(); ++i) EXPECT_NEAR(q2[i], q[i], 1e-6f * std::fabs(q[i]) + 1e-12f);
  // Same codes as the reference numerics' QuantizePerTokenInt8 (which divides instead of
  // multiplying by 127 / absmax) away from rounding ties.
  TokenQuantized ref = QuantizePerTokenInt8(x, rows, cols);
  int mismatches = 0;
  for (int64_t i = 0; i < rows * cols; ++i) mismatches += q[i] != ref.codes[i] * ref.scale[i / cols];
  EXPECT_LE(mismatches, 2);
}

TEST(StaticInt8, SaturatesAndUsesZeroPoint) {
  std::vector<float> x = {300, -300, 1.25f, -0.5f};
  ASSERT_TRUE(FakeQuantStaticInt8(x.data(), 1, 4, 1.0f).ok());
  EXPECT_EQ(x, (std::vector<float>{127, -128, 1, -0}));
  // zp 10, scale 0.5: 100 -> 200 + 10 -> 127 -> (127 - 10) * 0.5 = 58.5; -70 -> -140 + 10 -> -128 -> -69.
  std::vector<float> y = {100, -70, 0.25f};
  ASSERT_TRUE(FakeQuantStaticInt8(y.data(), 1, 3, 0.5f, 10).ok());
  EXPECT_EQ(y, (std::vector<float>{58.5f, -69.0f, 0.0f}));
  EXPECT_FALSE(FakeQuantStaticInt8(y.data(), 1, 3, 0.0f).ok());
  EXPECT_FALSE(FakeQuantStaticInt8(y.data(), 1, 3, 1.0f, 200).ok());
}

TEST(StaticFp8, HandCheckedAndSaturating) {
  // Scale 1. E4M3 steps: 0.125 in [1, 2), 32 in [256, 448]. 1.0625 is a tie -> 1.0 (even
  // mantissa), 1.1875 -> 1.25, 300 -> 288, 1000 -> 448 (saturate), -500 -> -448.
  std::vector<float> x = {1.0625f, 1.1875f, 300, 1000, -500, 0};
  ASSERT_TRUE(FakeQuantStaticFp8(x.data(), 2, 3, 1.0f).ok());
  EXPECT_EQ(x, (std::vector<float>{1.0f, 1.25f, 288, 448, -448, 0}));
  // Scale 0.5: 150 -> 300 -> 288 -> 144.
  std::vector<float> y = {150};
  ASSERT_TRUE(FakeQuantStaticFp8(y.data(), 1, 1, 0.5f).ok());
  EXPECT_EQ(y[0], 144.0f);
  EXPECT_FALSE(FakeQuantStaticFp8(y.data(), 1, 1, -1.0f).ok());
  EXPECT_FALSE(FakeQuantStaticFp8(y.data(), 1, 1, NAN).ok());
}

// Half the E4M3 spacing at |v| (in scaled units): 2^(e-3) / 2 for normals, 2^-9 / 2 below 2^-6.
float HalfStep(float v) {
  v = std::fabs(v);
  if (v < std::ldexp(1.0f, -6)) return std::ldexp(1.0f, -10);
  int e = static_cast<int>(std::floor(std::log2(v)));
  return std::ldexp(1.0f, e - 4);
}

TEST(Fp8, ErrorWithinHalfStepAndIdempotent) {
  std::mt19937 rng(9);
  std::normal_distribution<float> n(0.0f, 1.0f);
  const int64_t rows = 8, cols = 300;
  std::vector<float> x(rows * cols);
  for (size_t i = 0; i < x.size(); ++i) x[i] = n(rng) * (i % 50 == 0 ? 100.0f : 1.0f);
  const float s = 0.05f;  // some values saturate (|x| > 22.4)
  std::vector<float> q = x;
  ASSERT_TRUE(FakeQuantStaticFp8(q.data(), rows, cols, s).ok());
  int saturated = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    float scaled = x[i] / s;
    if (std::fabs(scaled) > 448.0f) {
      EXPECT_EQ(std::fabs(q[i]), 448.0f * s);
      ++saturated;
    } else {
      EXPECT_LE(std::fabs(q[i] - x[i]), HalfStep(scaled) * s * 1.0001f) << x[i];
    }
  }
  EXPECT_GT(saturated, 0);
  std::vector<float> q2 = q;
  ASSERT_TRUE(FakeQuantStaticFp8(q2.data(), rows, cols, s).ok());
  EXPECT_EQ(q2, q);

  // Dynamic per token: every row's absmax maps to 448 and back.
  std::vector<float> t = x;
  FakeQuantPerTokenFp8(t.data(), rows, cols);
  for (int64_t r = 0; r < rows; ++r) {
    float absmax = 0;
    for (int64_t c = 0; c < cols; ++c) absmax = std::max(absmax, std::fabs(x[r * cols + c]));
    const float scale = absmax / 448.0f;
    for (int64_t c = 0; c < cols; ++c) {
      EXPECT_LE(std::fabs(t[r * cols + c] - x[r * cols + c]), HalfStep(x[r * cols + c] / scale) * scale * 1.001f);
    }
  }
  std::vector<float> t2 = t;
  FakeQuantPerTokenFp8(t2.data(), rows, cols);
  for (size_t i = 0; i < t.size(); ++i) EXPECT_NEAR(t2[i], t[i], 1e-6f * std::fabs(t[i]));
}

TEST(Fp8, PerTokenVersusPerTensor) {
  // Row 0 absmax 896, row 1 = {2.125, 0}.
  // Per tensor: scale 2, 2.125 / 2 = 1.0625 -> 1.0 (tie to even) -> 2.0.
  // Per token: row 1 scale 2.125 / 448, so 2.125 -> 448 -> 2.125 exactly representable.
  std::vector<float> a = {896, 0, 2.125f, 0};
  std::vector<float> b = a;
  FakeQuantPerTensorFp8(a.data(), 2, 2);
  EXPECT_EQ(a, (std::vector<float>{896, 0, 2.0f, 0}));
  FakeQuantPerTokenFp8(b.data(), 2, 2);
  EXPECT_EQ(b[0], 896.0f);
  EXPECT_NEAR(b[2], 2.125f, 1e-6f);
}

TEST(Fp8, MinimumScalingFactor) {
  // A zero row stays zero; a tiny row uses scale 1 / (448 * 512): 1e-9 / scale = 2.3e-4 is
  // below half the smallest subnormal (2^-9 / 2), so it flushes to 0.
  std::vector<float> x = {0, 0, 1e-9f, -1e-9f};
  FakeQuantPerTokenFp8(x.data(), 2, 2);
  EXPECT_EQ(x, (std::vector<float>{0, 0, 0, 0}));
  std::vector<float> y = {1e-9f};
  FakeQuantPerTensorFp8(y.data(), 1, 1);
  EXPECT_EQ(y[0], 0.0f);
}

// vLLM's per-token FP8 kernel divides by the scale; its per-tensor ones multiply by 1 / scale.
// Find rows [x, absmax] where the two round to different E4M3 codes (x / s within an f32 ulp of
// a midpoint between codes) and check each fake quantizer follows its kernel.
TEST(Fp8, PerTokenDividesPerTensorMultipliesByTheInverse) {
  int found = 0;
  for (int i = 1; i < 200000 && found < 3; ++i) {
    const float absmax = 448.0f * (1.0f + static_cast<float>(i) * 1e-5f);
    const float s = std::max(absmax / kFp8E4M3Max, kFp8MinScalingFactor);
    const float x = 1.0625f * s;  // ≈ the midpoint of the codes for 1.0 and 1.125
    const uint8_t divided = FloatToFp8E4M3(x / s), multiplied = FloatToFp8E4M3(x * (1.0f / s));
    if (divided == multiplied) continue;
    ++found;
    std::vector<float> row = {x, absmax};
    FakeQuantPerTokenFp8(row.data(), 1, 2);
    EXPECT_EQ(row[0], Fp8E4M3ToFloat(divided) * s) << i;
    std::vector<float> tensor = {x, absmax};
    FakeQuantPerTensorFp8(tensor.data(), 1, 2);
    EXPECT_EQ(tensor[0], Fp8E4M3ToFloat(multiplied) * s) << i;
  }
  EXPECT_GE(found, 1);
}

TEST(KvCacheFp8, SeparateScalesAndSaturation) {
  // k_scale 2: 1000 -> 500 -> 448 -> 896; 3 -> 1.5 -> 1.5 -> 3. v_scale 0.25: 0.3 -> 1.2 -> 1.25
  // -> 0.3125; -200 -> -800 -> -448 -> -112.
  std::vector<float> k = {1000, 3};
  std::vector<float> v = {0.3f, -200};
  ASSERT_TRUE(FakeQuantKvCacheFp8(k.data(), v.data(), 1, 2, 2.0f, 0.25f).ok());
  EXPECT_EQ(k, (std::vector<float>{896, 3}));
  EXPECT_EQ(v, (std::vector<float>{0.3125f, -112}));
  std::vector<float> k2 = k, v2 = v;
  ASSERT_TRUE(FakeQuantKvCacheFp8(k2.data(), v2.data(), 1, 2, 2.0f, 0.25f).ok());
  EXPECT_EQ(k2, k);
  EXPECT_EQ(v2, v);
  EXPECT_FALSE(FakeQuantKvCacheFp8(k.data(), v.data(), 1, 2, 0.0f, 1.0f).ok());
  EXPECT_FALSE(FakeQuantKvCacheFp8(k.data(), v.data(), 1, 2, 1.0f, INFINITY).ok());
}

QuantArgs Args(QuantType type, Dynamic dynamic, Strategy strategy, bool symmetric = true) {
  QuantArgs a;
  a.type = type;
  a.num_bits = 8;
  a.dynamic = dynamic;
  a.strategy = strategy;
  a.symmetric = symmetric;
  return a;
}

TEST(FakeQuantActivations, Dispatch) {
  std::vector<float> x = {254, 1, 3, 5};
  std::vector<float> expect = x;
  FakeQuantPerTokenInt8(expect.data(), 1, 4);
  ASSERT_TRUE(FakeQuantActivations(Args(QuantType::kInt, Dynamic::kDynamic, Strategy::kToken), std::nullopt, x.data(),
                                   1, 4)
                  .ok());
  EXPECT_EQ(x, expect);

  std::vector<float> f = {1.0625f, 1000};
  ASSERT_TRUE(FakeQuantActivations(Args(QuantType::kFloat, Dynamic::kStatic, Strategy::kTensor), QParam{1.0f, 0},
                                   f.data(), 1, 2)
                  .ok());
  EXPECT_EQ(f, (std::vector<float>{1.0f, 448}));
  // Static without a scale.
  EXPECT_FALSE(
      FakeQuantActivations(Args(QuantType::kFloat, Dynamic::kStatic, Strategy::kTensor), std::nullopt, f.data(), 1, 2)
          .ok());
  // Asymmetric static int8 uses the zero point.
  std::vector<float> y = {100, -70};
  ASSERT_TRUE(FakeQuantActivations(Args(QuantType::kInt, Dynamic::kStatic, Strategy::kTensor, false),
                                   QParam{0.5f, 10}, y.data(), 1, 2)
                  .ok());
  EXPECT_EQ(y, (std::vector<float>{58.5f, -69.0f}));
  // Unsupported: int8 dynamic per tensor, int4, FP8 per channel.
  absl::Status st =
      FakeQuantActivations(Args(QuantType::kInt, Dynamic::kDynamic, Strategy::kTensor), std::nullopt, y.data(), 1, 2);
  EXPECT_EQ(st.code(), absl::StatusCode::kUnimplemented);
  QuantArgs int4 = Args(QuantType::kInt, Dynamic::kDynamic, Strategy::kToken);
  int4.num_bits = 4;
  EXPECT_EQ(FakeQuantActivations(int4, std::nullopt, y.data(), 1, 2).code(), absl::StatusCode::kUnimplemented);
}

}  // namespace
}  // namespace lowbit
