// The kernels' CPU reference agrees with common/numerics (the calibrator's oracle): per-token
// int8 quantization, FP8 quantization, and the compressed-tensors int4 packing.
#include <algorithm>
#include <cmath>
#include <vector>

#include "common/dtype.h"
#include "common/numerics.h"
#include "gtest/gtest.h"
#include "kernels/reference.h"
#include "kernels/validate.h"

namespace lowbit::kernels {
namespace {

std::vector<float> Data(int64_t n, uint32_t seed) {
  std::vector<float> v(n);
  uint32_t s = seed;
  for (auto& x : v) {
    s = s * 1664525u + 1013904223u;
    x = (static_cast<int32_t>(s >> 8) % 20001 - 10000) / 997.0f;
  }
  return v;
}

TEST(KernelsReference, Int8PerTokenMatchesCommon) {
  const int64_t m = 5, k = 333;
  std::vector<float> x = Data(m * k, 1);
  for (int64_t c = 0; c < k; ++c) x[2 * k + c] = 0.0f;  // all-zero row
  x[0] = 127.0f;
  x[1] = 0.5f;
  x[2] = 1.5f;
  x[3] = -2.5f;
  TokenQuantized want = QuantizePerTokenInt8(x, m, k);
  std::vector<int8_t> q(m * k);
  std::vector<float> s(m);
  ref::QuantizeInt8PerToken(DType::kF32, x.data(), m, k, q.data(), s.data());
  EXPECT_EQ(q, want.codes);
  EXPECT_EQ(s, want.scale);
  EXPECT_EQ(q[1], 0);
  EXPECT_EQ(q[2], 2);
  EXPECT_EQ(q[3], -2);
}

TEST(KernelsReference, Fp8MatchesCommon) {
  const int64_t m = 3, k = 257;
  std::vector<float> x = Data(m * k, 2);
  std::vector<uint8_t> q(m * k);
  std::vector<float> s(m);
  ref::QuantizeFp8PerToken(DType::kF32, x.data(), m, k, q.data(), s.data());
  for (int64_t r = 0; r < m; ++r) {
    float absmax = 0;
    for (int64_t c = 0; c < k; ++c) absmax = std::max(absmax, std::fabs(x[r * k + c]));
    EXPECT_EQ(s[r], absmax / 448.0f);
    for (int64_t c = 0; c < k; ++c) EXPECT_EQ(q[r * k + c], QuantizeFp8(x[r * k + c], s[r]));
  }
  ref::QuantizeFp8PerTensor(DType::kF32, x.data(), m, k, 0.01f, q.data());
  for (int64_t i = 0; i < m * k; ++i) EXPECT_EQ(q[i], QuantizeFp8(x[i], 0.01f));
}

TEST(KernelsReference, Int4DecodingMatchesCommonPacking) {
  const int64_t n = 19, k = 264, gs = 128, groups = 3;
  std::vector<int8_t> codes(n * k), zeros(n * groups);
  for (int64_t i = 0; i < n * k; ++i) codes[i] = static_cast<int8_t>((i * 7 + i / 13) % 16 - 8);
  for (int64_t i = 0; i < n * groups; ++i) zeros[i] = static_cast<int8_t>((i * 5) % 16 - 8);
  std::vector<int32_t> packed = PackRows(codes, n, k, 4);
  std::vector<int32_t> zp = PackColumns(zeros, n, groups, 4);
  std::vector<float> scale(n * groups, 0.5f);
  Int4WeightSource src;
  src.weight_packed = packed.data();
  src.n = n;
  src.k = k;
  src.group_size = gs;
  src.scale = {scale.data(), DType::kF32, n * groups};
  src.zero_point_packed = zp.data();
  DecodedInt4 d;
  ASSERT_TRUE(DecodeInt4(src, &d).ok());
  EXPECT_EQ(d.codes, codes);
  EXPECT_EQ(d.zero, zeros);
  EXPECT_EQ(d.groups, groups);
  // The reference GEMM with x = e_j picks out the dequantized weight column j.
  std::vector<float> x(k, 0.0f);
  x[200] = 1.0f;
  std::vector<uint16_t> xb(k), y(n);
  for (int64_t i = 0; i < k; ++i) xb[i] = FloatToBf16(x[i]);
  ref::GemmW4A16(1, DType::kBF16, xb.data(), src, nullptr, y.data());
  for (int64_t r = 0; r < n; ++r)
    EXPECT_EQ(Bf16ToFloat(y[r]), (codes[r * k + 200] - zeros[r * groups + 1]) * 0.5f) << r;
}

}  // namespace
}  // namespace lowbit::kernels
