// Float formats against independent expectations: the OCP E4M3FN bit layout evaluated with
// std::pow (all 256 codes), hand-picked rounding cases, and GCC's _Float16 for fp16.
#include "common/dtype.h"

#include <bit>
#include <cmath>
#include <cstdint>
#include <random>

#include "gtest/gtest.h"

namespace lowbit {
namespace {

// E4M3FN per the OCP spec: bias 7; exponent field 0 -> subnormal m/8 * 2^-6; S.1111.111 NaN.
double SpecE4M3(uint8_t code) {
  int sign = code >> 7, e = (code >> 3) & 15, m = code & 7;
  if (e == 15 && m == 7) return NAN;
  double mag = e == 0 ? (m / 8.0) * std::pow(2.0, -6) : (1.0 + m / 8.0) * std::pow(2.0, e - 7);
  return sign ? -mag : mag;
}

TEST(Fp8E4M3, AllCodesDecodePerSpec) {
  int nans = 0;
  for (int c = 0; c < 256; ++c) {
    double want = SpecE4M3(static_cast<uint8_t>(c));
    float got = Fp8E4M3ToFloat(static_cast<uint8_t>(c));
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << c;
      ++nans;
    } else {
      EXPECT_EQ(static_cast<double>(got), want) << "code " << c;
    }
  }
  EXPECT_EQ(nans, 2);  // 0x7F and 0xFF only: no infinities
  EXPECT_EQ(Fp8E4M3ToFloat(0x7E), 448.0f);
  EXPECT_EQ(Fp8E4M3ToFloat(0x01), std::ldexp(1.0f, -9));
  EXPECT_EQ(Fp8E4M3ToFloat(0x08), std::ldexp(1.0f, -6));
}

TEST(Fp8E4M3, EncodeKnownValues) {
  EXPECT_EQ(FloatToFp8E4M3(1.0f), 0x38);
  EXPECT_EQ(FloatToFp8E4M3(0.5f), 0x30);
  EXPECT_EQ(FloatToFp8E4M3(2.0f), 0x40);
  EXPECT_EQ(FloatToFp8E4M3(-2.0f), 0xC0);
  EXPECT_EQ(FloatToFp8E4M3(448.0f), 0x7E);
  EXPECT_EQ(FloatToFp8E4M3(0.0f), 0x00);
  EXPECT_EQ(FloatToFp8E4M3(-0.0f), 0x80);
}

TEST(Fp8E4M3, EveryCodeRoundTrips) {
  for (int c = 0; c < 256; ++c) {
    float v = Fp8E4M3ToFloat(static_cast<uint8_t>(c));
    if (std::isnan(v)) continue;
    EXPECT_EQ(FloatToFp8E4M3(v), c) << "code " << c;
  }
}

TEST(Fp8E4M3, RoundsToNearestEvenBetweenNeighbours) {
  // Walk all adjacent positive finite codes: the midpoint goes to the even mantissa, and a
  // hair either side goes to the nearer one.
  for (int c = 0; c < 0x7E; ++c) {
    float lo = Fp8E4M3ToFloat(c), hi = Fp8E4M3ToFloat(c + 1);
    float mid = (lo + hi) / 2;  // exact in float
    int even = (c % 2 == 0) ? c : c + 1;
    EXPECT_EQ(FloatToFp8E4M3(mid), even) << "between " << lo << " and " << hi;
    EXPECT_EQ(FloatToFp8E4M3(std::nextafter(mid, 0.0f)), c);
    EXPECT_EQ(FloatToFp8E4M3(std::nextafter(mid, 1e9f)), c + 1);
    EXPECT_EQ(FloatToFp8E4M3(-mid), 0x80 | even);
  }
}

TEST(Fp8E4M3, SaturatesAndKeepsNaN) {
  for (float v : {449.0f, 464.0f, 479.0f, 480.0f, 1e6f, INFINITY}) {
    EXPECT_EQ(FloatToFp8E4M3(v), 0x7E) << v;
    EXPECT_EQ(FloatToFp8E4M3(-v), 0xFE) << -v;
  }
  EXPECT_TRUE(std::isnan(Fp8E4M3ToFloat(FloatToFp8E4M3(NAN))));
  // Below half the smallest subnormal rounds to zero; exactly half rounds to even (zero).
  EXPECT_EQ(FloatToFp8E4M3(std::ldexp(1.0f, -10)), 0x00);
  EXPECT_EQ(FloatToFp8E4M3(std::ldexp(1.5f, -10)), 0x01);
}

TEST(Bf16, RoundHalfEvenAndSpecials) {
  EXPECT_EQ(FloatToBf16(1.0f), 0x3F80);
  EXPECT_EQ(FloatToBf16(std::bit_cast<float>(0x3F808000u)), 0x3F80);  // tie -> even
  EXPECT_EQ(FloatToBf16(std::bit_cast<float>(0x3F818000u)), 0x3F82);  // tie -> even (up)
  EXPECT_EQ(FloatToBf16(std::bit_cast<float>(0x3F808001u)), 0x3F81);  // above tie
  EXPECT_EQ(FloatToBf16(-2.0f), 0xC000);
  EXPECT_TRUE(std::isnan(Bf16ToFloat(FloatToBf16(NAN))));
  EXPECT_EQ(Bf16ToFloat(FloatToBf16(INFINITY)), INFINITY);
  EXPECT_EQ(Bf16ToFloat(0x3F80), 1.0f);
}

TEST(Fp16, MatchesCompilerFloat16) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<uint32_t> bits;
  for (int i = 0; i < 200000; ++i) {
    float f = std::bit_cast<float>(bits(rng));
    if (std::isnan(f)) continue;
    _Float16 h = static_cast<_Float16>(f);
    uint16_t want = std::bit_cast<uint16_t>(h);
    ASSERT_EQ(FloatToFp16(f), want) << f;
  }
  for (uint32_t c = 0; c < 65536; ++c) {
    _Float16 h = std::bit_cast<_Float16>(static_cast<uint16_t>(c));
    float want = static_cast<float>(h);
    float got = Fp16ToFloat(static_cast<uint16_t>(c));
    if (std::isnan(want)) EXPECT_TRUE(std::isnan(got));
    else ASSERT_EQ(got, want) << c;
  }
}

TEST(DType, NamesRoundTrip) {
  for (DType d : {DType::kF32, DType::kF16, DType::kBF16, DType::kI8, DType::kU8, DType::kI32, DType::kI64,
                  DType::kF8E4M3}) {
    EXPECT_EQ(ParseDType(DTypeName(d)), d);
  }
  EXPECT_FALSE(ParseDType("F64").has_value());
  EXPECT_EQ(DTypeSize(DType::kF8E4M3), 1u);
  EXPECT_EQ(DTypeSize(DType::kI64), 8u);
}

}  // namespace
}  // namespace lowbit
