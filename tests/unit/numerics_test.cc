// Reference numerics against hand-worked values from compressed-tensors' formulas
// (shared/reference/llm-compressor-algorithms.md §2) and the packing spec.
#include "common/numerics.h"

#include <cmath>
#include <random>

#include "gtest/gtest.h"

namespace lowbit {
namespace {

QuantArgs Int(int bits, bool symmetric = true) {
  QuantArgs a;
  a.num_bits = bits;
  a.symmetric = symmetric;
  a.strategy = Strategy::kTensor;
  return a;
}

TEST(QParams, Int4SymmetricWorkedValues) {
  QuantArgs a = Int(4);
  QParam q = ComputeQParam(a, -3.0f, 3.0f, DType::kF32);
  EXPECT_FLOAT_EQ(q.scale, 3.0f / 7.5f);
  EXPECT_EQ(q.zero_point, 0);
  EXPECT_EQ(QuantizeInt(3.0f, q, -8, 7), 7);    // +absmax -> 7.5 -> clamped to 7
  EXPECT_EQ(QuantizeInt(-3.0f, q, -8, 7), -8);  // -absmax -> -7.5 -> -8
  EXPECT_NEAR(DequantizeInt(7, q), 0.9333333f * 3.0f, 1e-5);
}

TEST(QParams, Int8ScaleIsAbsmaxOver127_5) {
  QParam q = ComputeQParam(Int(8), -2.0f, 5.1f, DType::kF32);
  EXPECT_FLOAT_EQ(q.scale, 5.1f / 127.5f);
  EXPECT_EQ(QuantizeInt(5.1f, q, -128, 127), 127);
  EXPECT_EQ(QuantizeInt(-5.1f, q, -128, 127), -128);
}

TEST(QParams, CompressedTensorsUnitTestValues) {
  // compressed-tensors test_static_attention_quantization: int4 per-tensor on 0..11 gives
  // scale 11/7.5 = 1.46875 in bf16, and 11 reconstructs to 10.25 (in bf16).
  QParam q = ComputeQParam(Int(4), 0.0f, 11.0f, DType::kBF16);
  EXPECT_EQ(q.scale, 1.46875f);
  int32_t code = QuantizeInt(11.0f, q, -8, 7, DType::kBF16);
  EXPECT_EQ(code, 7);
  // 7 * 1.46875 = 10.28125, which the bf16 output rounds (tie, to even) to 10.25.
  EXPECT_EQ(RoundToDType(DequantizeInt(code, q), DType::kBF16), 10.25f);
}

TEST(QParams, AsymmetricZeroPoint) {
  // min -1, max 3, int4: scale = 4/15; zp = round(-8 - (-1)/(4/15)) = round(-4.25) = -4.
  QParam q = ComputeQParam(Int(4, /*symmetric=*/false), -1.0f, 3.0f, DType::kF32);
  EXPECT_FLOAT_EQ(q.scale, 4.0f / 15.0f);
  EXPECT_EQ(q.zero_point, -4);
  // The range is widened to include zero: [2, 3] behaves as [0, 3], zp = qmin.
  QParam p = ComputeQParam(Int(4, false), 2.0f, 3.0f, DType::kF32);
  EXPECT_FLOAT_EQ(p.scale, 3.0f / 15.0f);
  EXPECT_EQ(p.zero_point, -8);
  EXPECT_EQ(QuantizeInt(0.0f, p, -8, 7), -8);
}

TEST(QParams, ZeroRangeUsesDTypeEpsilon) {
  EXPECT_EQ(ComputeQParam(Int(8), 0.0f, 0.0f, DType::kBF16).scale, 0.0078125f);
  EXPECT_EQ(ComputeQParam(Int(8), 0.0f, 0.0f, DType::kF16).scale, 0.0009765625f);
}

TEST(QParams, Fp8ScaleIsAbsmaxOver448) {
  QuantArgs a;
  a.type = QuantType::kFloat;
  a.strategy = Strategy::kTensor;
  QParam q = ComputeQParam(a, -896.0f, 100.0f, DType::kF32);
  EXPECT_EQ(q.scale, 2.0f);
  EXPECT_EQ(QuantizeFp8(-896.0f, q.scale), 0xFE);  // -448
  EXPECT_EQ(QuantizeFp8(2.0f, q.scale), 0x38);     // 1.0
}

TEST(Rounding, HalfToEven) {
  QParam unit{1.0f, 0};
  EXPECT_EQ(QuantizeInt(0.5f, unit, -8, 7), 0);
  EXPECT_EQ(QuantizeInt(1.5f, unit, -8, 7), 2);
  EXPECT_EQ(QuantizeInt(2.5f, unit, -8, 7), 2);
  EXPECT_EQ(QuantizeInt(-2.5f, unit, -8, 7), -2);
  EXPECT_EQ(QuantizeInt(100.0f, unit, -8, 7), 7);
}

TEST(Packing, HandCheckedInt4Word) {
  // codes [1, 2, 0, 0, 0, 0, 0, 0] -> unsigned [9, 10, 8, ...] -> 0x888888A9.
  std::vector<int8_t> codes = {1, 2, 0, 0, 0, 0, 0, 0};
  std::vector<int32_t> packed = PackRows(codes, 1, 8, 4);
  ASSERT_EQ(packed.size(), 1u);
  EXPECT_EQ(packed[0], -2004318039);
  EXPECT_EQ(static_cast<uint32_t>(packed[0]), 0x888888A9u);
  // Zero points pack along rows: the same eight values in a column give the same word.
  std::vector<int32_t> zp = PackColumns(codes, 8, 1, 4);
  ASSERT_EQ(zp.size(), 1u);
  EXPECT_EQ(zp[0], -2004318039);
  // 8-bit packs four per word: [-128, 127, 0, 1] -> [0, 255, 128, 129].
  std::vector<int8_t> b8 = {-128, 127, 0, 1};
  EXPECT_EQ(static_cast<uint32_t>(PackRows(b8, 1, 4, 8)[0]), 0x8180FF00u);
}

TEST(Packing, RoundTripsWithPadding) {
  std::mt19937 rng(1);
  for (int bits : {4, 8}) {
    for (auto [rows, cols] : {std::pair{3, 8}, {5, 13}, {16, 128}, {9, 1}}) {
      std::uniform_int_distribution<int> d(-(1 << (bits - 1)), (1 << (bits - 1)) - 1);
      std::vector<int8_t> codes(rows * cols);
      for (auto& c : codes) c = static_cast<int8_t>(d(rng));
      int per = 32 / bits;
      auto packed = PackRows(codes, rows, cols, bits);
      EXPECT_EQ(packed.size(), static_cast<size_t>(rows * ((cols + per - 1) / per)));
      EXPECT_EQ(UnpackRows(packed, rows, cols, bits), codes);
      auto packed_cols = PackColumns(codes, rows, cols, bits);
      EXPECT_EQ(packed_cols.size(), static_cast<size_t>(((rows + per - 1) / per) * cols));
      EXPECT_EQ(UnpackColumns(packed_cols, rows, cols, bits), codes);
    }
  }
}

TEST(WeightObserver, GroupScalesPerRowAndGroup) {
  QuantArgs a = Int(4);
  a.strategy = Strategy::kGroup;
  a.group_size = 4;
  // 2 rows x 8 cols: groups [0,4) and [4,8); absmax per cell known by construction.
  std::vector<float> w = {1, -2, 0.5, 0, 3, 0, 0, -1,
                          -7.5, 1, 1, 1, 0, 0, 0.75, 0};
  auto qp = ObserveWeight(w, 2, 8, a, DType::kF32);
  ASSERT_TRUE(qp.ok()) << qp.status();
  ASSERT_EQ(qp->groups, 2);
  EXPECT_FLOAT_EQ(qp->scale[0], 2.0f / 7.5f);
  EXPECT_FLOAT_EQ(qp->scale[1], 3.0f / 7.5f);
  EXPECT_FLOAT_EQ(qp->scale[2], 1.0f);
  EXPECT_FLOAT_EQ(qp->scale[3], 0.1f);
  auto codes = QuantizeWeightInt(w, 2, 8, a, *qp);
  EXPECT_EQ(codes[8], -8);  // -7.5 / 1.0
  EXPECT_EQ(codes[14], 7);  // 0.75 / 0.1 = 7.5 -> clamp 7
}

TEST(WeightObserver, MseNeverWorseThanMinMaxAndShrinksForOutliers) {
  std::mt19937 rng(3);
  std::normal_distribution<float> n(0.0f, 1.0f);
  std::vector<float> w(512);
  for (auto& v : w) v = n(rng);
  w[17] = 12.0f;  // one outlier stretches the min-max range
  QuantArgs mm = Int(4);
  mm.strategy = Strategy::kChannel;
  QuantArgs mse = mm;
  mse.observer = "mse";
  auto a = ObserveWeight(w, 1, 512, mm, DType::kF32);
  auto b = ObserveWeight(w, 1, 512, mse, DType::kF32);
  ASSERT_TRUE(a.ok() && b.ok());
  auto err = [&](const WeightQParams& qp, const QuantArgs& args) {
    double e = 0;
    for (float v : w) e += std::pow(std::fabs(FakeQuantize(v, qp.at(0, 0), args) - v), 2.4);
    return e;
  };
  EXPECT_LT(b->scale[0], a->scale[0]);
  EXPECT_LE(err(*b, mse), err(*a, mm));
}

TEST(PerTokenInt8, ScaleIsRowAbsmaxOver127) {
  std::vector<float> x = {1.0f, -2.0f, 0.5f, 0.0f, 0.0f, 0.0f};
  TokenQuantized q = QuantizePerTokenInt8(x, 2, 3);
  EXPECT_FLOAT_EQ(q.scale[0], 2.0f / 127.0f);
  EXPECT_EQ(q.codes[0], 64);    // 63.5 -> 64 (even)
  EXPECT_EQ(q.codes[1], -127);
  EXPECT_EQ(q.codes[2], 32);    // 31.75
  EXPECT_EQ(q.scale[1], 1.0f);  // all-zero row
  EXPECT_EQ(q.codes[3], 0);
}

TEST(ActivationObserver, StaticAndEma) {
  ActivationObserver global;
  global.Observe(std::vector<float>{-1.0f, 2.0f});
  global.Observe(std::vector<float>{-0.5f, 4.0f});
  EXPECT_EQ(global.min(), -1.0f);
  EXPECT_EQ(global.max(), 4.0f);
  ActivationObserver ema(/*ema=*/true, 0.5f);
  ema.Observe(std::vector<float>{-1.0f, 2.0f});
  ema.Observe(std::vector<float>{-3.0f, 4.0f});
  EXPECT_EQ(ema.min(), -2.0f);
  EXPECT_EQ(ema.max(), 3.0f);
}

}  // namespace
}  // namespace lowbit
