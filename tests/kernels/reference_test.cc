// The kernels' CPU reference agrees with common/numerics (the calibrator's oracle): per-token
// int8 quantization, FP8 quantization, and the compressed-tensors int4 packing.
#include "kernels/reference.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <vector>

#include "common/dtype.h"
#include "common/numerics.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
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

// The quantizers do vLLM's arithmetic (kernel-anchors.md §6): int8 per token multiplies by
// 127 / absmax — not x / (absmax / 127), which rounds differently about once in a million — and
// writes absmax / 127; zero rows get scale 1 and codes 0. Expected values: the formula spelled
// out here, common/numerics (which divides) away from the rounding ties, and a hand-checked tie.
TEST(KernelsReference, Int8PerTokenIsVllmArithmetic) {
  const int64_t m = 5, k = 333;
  std::vector<float> x = Data(m * k, 1);
  for (int64_t c = 0; c < k; ++c) x[2 * k + c] = 0.0f;  // all-zero row
  x[0] = 127.0f;
  x[1] = 0.5f;
  x[2] = 1.5f;
  x[3] = -2.5f;
  std::vector<int8_t> q(m * k);
  std::vector<float> s(m);
  ref::QuantizeInt8PerToken(DType::kF32, x.data(), m, k, q.data(), s.data());
  TokenQuantized divided = QuantizePerTokenInt8(x, m, k);
  int differ = 0;
  for (int64_t r = 0; r < m; ++r) {
    float absmax = 0;
    for (int64_t c = 0; c < k; ++c) absmax = std::max(absmax, std::fabs(x[r * k + c]));
    const float mult = absmax > 0 ? 127.0f / absmax : 0.0f;
    EXPECT_EQ(s[r], absmax > 0 ? absmax / 127.0f : 1.0f) << r;
    for (int64_t c = 0; c < k; ++c) {
      const float v = std::nearbyint(std::clamp(x[r * k + c] * mult, -128.0f, 127.0f));
      EXPECT_EQ(q[r * k + c], static_cast<int8_t>(v)) << r << "," << c;
      differ += q[r * k + c] != divided.codes[r * k + c];
    }
  }
  EXPECT_LE(differ, 1);
  EXPECT_EQ(q[1], 0);
  EXPECT_EQ(q[2], 2);
  EXPECT_EQ(q[3], -2);
  // x · (127 / absmax) = -57.5 exactly (→ -58, half to even); x / (absmax / 127) = -57.499996.
  const float row[2] = {-0x1.a68d74p+0f, 0x1.d2a52p+1f};
  ref::QuantizeInt8PerToken(DType::kF32, row, 1, 2, q.data(), s.data());
  EXPECT_EQ(q[0], -58);
  EXPECT_EQ(q[1], 127);
}

// FP8 per token divides by max(absmax / 448, 1 / (448 · 512)) (vLLM's floor); per tensor it
// multiplies by 1 / scale.
TEST(KernelsReference, Fp8IsVllmArithmetic) {
  const int64_t m = 4, k = 257;
  std::vector<float> x = Data(m * k, 2);
  for (int64_t c = 0; c < k; ++c) x[3 * k + c] *= 1e-4f;  // a row under the floor: absmax < 448 / 229376
  std::vector<uint8_t> q(m * k);
  std::vector<float> s(m);
  ref::QuantizeFp8PerToken(DType::kF32, x.data(), m, k, q.data(), s.data());
  const float floor = 1.0f / 229376.0f;
  for (int64_t r = 0; r < m; ++r) {
    float absmax = 0;
    for (int64_t c = 0; c < k; ++c) absmax = std::max(absmax, std::fabs(x[r * k + c]));
    EXPECT_EQ(s[r], std::max(absmax / 448.0f, floor)) << r;
    for (int64_t c = 0; c < k; ++c) EXPECT_EQ(q[r * k + c], QuantizeFp8(x[r * k + c], s[r]));
  }
  EXPECT_EQ(s[3], floor);
  ref::QuantizeFp8PerTensor(DType::kF32, x.data(), m, k, 0.01f, q.data());
  const float inv = 1.0f / 0.01f;
  for (int64_t i = 0; i < m * k; ++i)
    EXPECT_EQ(q[i], FloatToFp8E4M3(std::clamp(x[i] * inv, -kFp8E4M3Max, kFp8E4M3Max))) << i;
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
  ASSERT_EQ(d.row_bytes, k / 2);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t c = 0; c < k; ++c) ASSERT_EQ(d.Code(r, c), codes[r * k + c]) << r << "," << c;
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

// The decoded rows: an odd K's last high nibble is q = 0, and an activation-order g_idx gives
// kernel column j the checkpoint column perm[j], sorted by group (stable).
TEST(KernelsReference, Int4DecodingOddKAndActivationOrder) {
  const int64_t n = 3, k = 13;
  std::vector<int8_t> codes(n * k);
  for (int64_t i = 0; i < n * k; ++i) codes[i] = static_cast<int8_t>((i * 5 + 3) % 16 - 8);
  std::vector<int32_t> packed = PackRows(codes, n, k, 4);
  std::vector<float> scale(n, 1.0f);
  Int4WeightSource src;
  src.weight_packed = packed.data();
  src.n = n;
  src.k = k;
  src.scale = {scale.data(), DType::kF32, n};
  DecodedInt4 d;
  ASSERT_TRUE(DecodeInt4(src, &d).ok());
  ASSERT_EQ(d.row_bytes, 7);
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t c = 0; c < k; ++c) EXPECT_EQ(d.Code(r, c), codes[r * k + c]) << r << "," << c;
    EXPECT_EQ(d.nibbles[r * 7 + 6] >> 4, 8) << r;
  }

  const int64_t k2 = 8, gs = 4;
  std::vector<int8_t> codes2(n * k2);
  for (int64_t i = 0; i < n * k2; ++i) codes2[i] = static_cast<int8_t>((i * 3 + 1) % 16 - 8);
  std::vector<int32_t> packed2 = PackRows(codes2, n, k2, 4);
  const std::vector<int32_t> g_idx = {1, 0, 1, 0, 0, 1, 1, 0};  // group 0: columns 1 3 4 7
  const std::vector<int32_t> want_perm = {1, 3, 4, 7, 0, 2, 5, 6};
  std::vector<float> scale2(n * 2, 1.0f);
  src.weight_packed = packed2.data();
  src.k = k2;
  src.group_size = gs;
  src.scale = {scale2.data(), DType::kF32, n * 2};
  src.g_idx = g_idx.data();
  ASSERT_TRUE(DecodeInt4(src, &d).ok());
  EXPECT_EQ(d.perm, want_perm);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t j = 0; j < k2; ++j) EXPECT_EQ(d.Code(r, j), codes2[r * k2 + want_perm[j]]) << r << "," << j;
}

// The oracle's FP8 GEMM: a NaN code (0x7F / 0xFF; E4M3 has no infinities) makes every dot
// product it enters NaN, as float arithmetic does; the rest is the exact sum.
TEST(KernelsReference, Fp8GemmNanCodesGiveNan) {
  const int64_t m = 3, n = 4, k = 5;
  std::vector<uint8_t> x(m * k), w(n * k);
  for (int64_t i = 0; i < m * k; ++i) x[i] = FloatToFp8E4M3(0.25f * static_cast<float>(i % 7 - 3));
  for (int64_t i = 0; i < n * k; ++i) w[i] = FloatToFp8E4M3(0.5f * static_cast<float>(i % 5 - 2));
  x[0 * k + 1] = 0x7F;  // row 0
  x[1 * k + 4] = 0xFF;  // row 1
  w[2 * k + 3] = 0x7F;  // column 2
  const float xs = 1.0f, ws = 2.0f;
  std::vector<float> y(m * n);
  ref::GemmFp8(m, x.data(), &xs, 1, {w.data(), n, k, {&ws, DType::kF32, 1}}, nullptr, DType::kF32, y.data(), nullptr);
  for (int64_t r = 0; r < m; ++r)
    for (int64_t c = 0; c < n; ++c) {
      if (r < 2 || c == 2) {
        EXPECT_TRUE(std::isnan(y[r * n + c])) << r << "," << c << " = " << y[r * n + c];
        continue;
      }
      double want = 0;
      for (int64_t i = 0; i < k; ++i) want += double{Fp8E4M3ToFloat(x[r * k + i])} * Fp8E4M3ToFloat(w[c * k + i]);
      EXPECT_EQ(y[r * n + c], static_cast<float>(want * ws * xs)) << r << "," << c;
    }
}

// Every CPU backend: an f32 row whose absmax / 127 underflows to 0 quantizes as a zero row
// (scale 1, codes 0) — not scale 0 with codes from 0 / 0; FP8 takes vLLM's floor scale.
TEST(CpuBackendEdges, RowsTooSmallForAScaleQuantizeAsZero) {
  const int64_t m = 2, k = 9;
  std::vector<float> x(m * k, 0.0f);
  x[3] = std::numeric_limits<float>::denorm_min();
  x[k + 5] = -8 * std::numeric_limits<float>::denorm_min();
  for (const char* name : {"cpu", "cpu-generic", "cpu-ref"}) {
    std::unique_ptr<Backend> b;
    ASSERT_TRUE(MakeBackend(name, {}, &b).ok()) << name;
    std::vector<int8_t> q8(m * k, 1);
    std::vector<uint8_t> q(m * k, 1);
    std::vector<float> s8(m, 0.0f), s(m, 0.0f);
    ASSERT_TRUE(b->QuantizeInt8PerToken(DType::kF32, x.data(), m, k, q8.data(), s8.data()).ok()) << name;
    ASSERT_TRUE(b->QuantizeFp8PerToken(DType::kF32, x.data(), m, k, q.data(), s.data()).ok()) << name;
    EXPECT_EQ(s8, std::vector<float>(m, 1.0f)) << name;
    EXPECT_EQ(s, std::vector<float>(m, kFp8MinPerTokenScale)) << name;  // vLLM's floor
    EXPECT_EQ(q8, std::vector<int8_t>(m * k, 0)) << name;
    for (uint8_t code : q) EXPECT_TRUE(code == 0x00 || code == 0x80) << name << ": " << int{code};  // ±0
  }
}

// The fast paths do the reference's (vLLM's) arithmetic: the int8 tie above, and FP8 per tensor
// by 1 / scale, on 8-lane bodies and scalar tails.
TEST(CpuBackendEdges, QuantizersUseVllmArithmetic) {
  const int64_t m = 3, k = 37;
  std::vector<float> x = Data(m * k, 7);
  x[5] = -0x1.a68d74p+0f;
  x[9] = 0x1.d2a52p+1f;  // row 0's absmax
  for (int64_t i = 0; i < k; ++i)
    if (i != 5 && i != 9) x[i] = std::min(std::max(x[i], -3.0f), 3.0f);
  std::vector<int8_t> want8(m * k);
  std::vector<uint8_t> want(m * k);
  std::vector<float> ws(m);
  ref::QuantizeInt8PerToken(DType::kF32, x.data(), m, k, want8.data(), ws.data());
  ASSERT_EQ(want8[5], -58);
  ref::QuantizeFp8PerTensor(DType::kF32, x.data(), m, k, 0.37f, want.data());
  for (const char* name : {"cpu", "cpu-generic"}) {
    std::unique_ptr<Backend> b;
    ASSERT_TRUE(MakeBackend(name, {}, &b).ok()) << name;
    std::vector<int8_t> q8(m * k);
    std::vector<uint8_t> q(m * k);
    std::vector<float> s(m);
    ASSERT_TRUE(b->QuantizeInt8PerToken(DType::kF32, x.data(), m, k, q8.data(), s.data()).ok());
    EXPECT_EQ(q8, want8) << name;
    EXPECT_EQ(s, ws) << name;
    ASSERT_TRUE(b->QuantizeFp8PerTensor(DType::kF32, x.data(), m, k, 0.37f, q.data()).ok());
    EXPECT_EQ(q, want) << name;
  }
}

// What the fast paths refuse, the reference backend refuses too (Requirements() is shared), and
// API misuse is a Status, not a crash or a wrong answer.
TEST(CpuBackendEdges, RefusalsAreSharedAndMisuseIsAStatus) {
  for (const char* name : {"cpu", "cpu-ref"}) {
    std::unique_ptr<Backend> b;
    ASSERT_TRUE(MakeBackend(name, {}, &b).ok()) << name;
    std::unique_ptr<PreparedWeight> pw;
    const float one = 1.0f;
    // W8A8 K > 65536: int32 accumulation could overflow.
    std::vector<int8_t> wide(65537, -128);
    Status st = b->PrepareInt8({wide.data(), 1, 65537, {&one, DType::kF32, 1}}, &pw);
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << name;
    EXPECT_NE(st.message().find("65536"), std::string::npos) << st.ToString();
    // An act-order g_idx whose groups are not group_size columns each.
    const int64_t n = 1, k = 8;
    std::vector<int32_t> packed(1, 0x76543210), g_idx = {0, 0, 0, 1, 1, 1, 1, 1};
    std::vector<float> scale(2, 1.0f);
    Int4WeightSource src;
    src.weight_packed = packed.data();
    src.n = n;
    src.k = k;
    src.group_size = 4;
    src.scale = {scale.data(), DType::kF32, 2};
    src.g_idx = g_idx.data();
    st = b->PrepareInt4(src, &pw);
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << name;
    EXPECT_NE(st.message().find("exactly group_size = 4"), std::string::npos) << st.ToString();
    // A static FP8 scale whose inverse overflows (the quantizer multiplies by 1 / scale: 0 · inf).
    std::vector<float> xs1(4, 0.0f);
    std::vector<uint8_t> q1(4);
    st = b->QuantizeFp8PerTensor(DType::kF32, xs1.data(), 1, 4, 1e-39f, q1.data());
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << name;
    EXPECT_NE(st.message().find("finite inverse"), std::string::npos) << st.ToString();
    // A null output pointer.
    std::vector<int8_t> w8(4 * 4, 1);
    st = b->PrepareInt8({w8.data(), 4, 4, {&one, DType::kF32, 1}}, nullptr);
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << name;
    // An allocation size that would wrap.
    void* p = nullptr;
    EXPECT_FALSE(b->Alloc(SIZE_MAX - 10, &p).ok()) << name;
    // An output that overlaps the activations (x: 4 × 4 int8 = 16 bytes, y: 4 × 4 f32).
    ASSERT_TRUE(b->PrepareInt8({w8.data(), 4, 4, {&one, DType::kF32, 1}}, &pw).ok()) << name;
    std::vector<float> buf(16, 0.0f), xs(4, 1.0f);
    GemmArgs a;
    a.m = 4;
    a.x = buf.data();
    a.x_dtype = DType::kI8;
    a.x_scale = xs.data();
    a.x_scale_count = 4;
    a.w = pw.get();
    a.y = buf.data() + 2;
    a.y_dtype = DType::kF32;
    st = b->GemmW8A8(a);
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << name;
    EXPECT_NE(st.message().find("overlaps"), std::string::npos) << st.ToString();
    std::vector<float> y(16);
    a.y = y.data();
    EXPECT_TRUE(b->GemmW8A8(a).ok()) << name;
  }
}

}  // namespace
}  // namespace lowbit::kernels
