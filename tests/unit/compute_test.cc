// The CPU Compute backend against naive double-precision loops: GEMM (both layouts of B,
// leading dimensions wider than the matrices, beta), the Gram update, and the inverse
// Cholesky factor GPTQ uses (checked through UᵀU·H = I, which with U upper and a positive
// diagonal determines U).
#include "calibrator/compute.h"

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace lowbit {
namespace {

std::vector<float> Random(int64_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

struct GemmCase {
  bool transpose_b;
  int64_t m, n, k, pad;
  float alpha, beta;
};

class GemmTest : public ::testing::TestWithParam<GemmCase> {};

TEST_P(GemmTest, MatchesNaiveLoops) {
  const GemmCase p = GetParam();
  const int64_t lda = p.k + p.pad;
  const int64_t ldb = (p.transpose_b ? p.k : p.n) + p.pad;
  const int64_t ldc = p.n + p.pad;
  const int64_t b_rows = p.transpose_b ? p.n : p.k;
  std::vector<float> a = Random(p.m * lda, 1), b = Random(b_rows * ldb, 2), c = Random(p.m * ldc, 3);
  if (p.beta == 0.0f) {
    for (int64_t i = 0; i < p.m; ++i) c[i * ldc] = std::numeric_limits<float>::quiet_NaN();  // must be ignored
  }
  std::vector<float> c0 = c;
  CpuCompute().Gemm(p.transpose_b, p.m, p.n, p.k, p.alpha, a.data(), lda, b.data(), ldb, p.beta, c.data(), ldc);
  for (int64_t i = 0; i < p.m; ++i) {
    for (int64_t j = 0; j < ldc; ++j) {
      if (j >= p.n) {  // padding between rows is left alone
        if (std::isnan(c0[i * ldc + j])) {
          EXPECT_TRUE(std::isnan(c[i * ldc + j]));
        } else {
          EXPECT_EQ(c[i * ldc + j], c0[i * ldc + j]);
        }
        continue;
      }
      double acc = 0;
      for (int64_t l = 0; l < p.k; ++l) {
        double bv = p.transpose_b ? b[j * ldb + l] : b[l * ldb + j];
        acc += static_cast<double>(a[i * lda + l]) * bv;
      }
      double want = p.alpha * acc + (p.beta == 0.0f ? 0.0 : p.beta * static_cast<double>(c0[i * ldc + j]));
      ASSERT_NEAR(c[i * ldc + j], want, 1e-4 * (1 + std::fabs(want)) * std::sqrt(static_cast<double>(p.k)))
          << "at " << i << "," << j;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, GemmTest,
                         ::testing::Values(GemmCase{false, 7, 5, 3, 0, 1.0f, 0.0f}, GemmCase{true, 7, 5, 3, 0, 1.0f, 0.0f},
                                           GemmCase{false, 33, 17, 65, 3, -1.0f, 1.0f},
                                           GemmCase{true, 33, 17, 65, 5, 0.5f, 0.25f},
                                           GemmCase{false, 64, 128, 96, 1, 2.0f, -0.5f},
                                           GemmCase{true, 1, 129, 40, 2, 1.0f, 0.0f}));

TEST(ComputeTest, GemmWithEmptyOutputIsANoOp) {
  float c = 5.0f;
  CpuCompute().Gemm(false, 0, 1, 3, 1.0f, nullptr, 3, nullptr, 1, 0.0f, &c, 1);
  EXPECT_EQ(c, 5.0f);
}

TEST(ComputeTest, AddGramAccumulatesBothTriangles) {
  const int64_t rows = 37, k = 70;
  std::vector<float> x1 = Random(rows * k, 4), x2 = Random(5 * k, 5);
  std::vector<float> h = Random(k * k, 6);
  // Start from a symmetric matrix (AddGram keeps H full and symmetric).
  for (int64_t i = 0; i < k; ++i) {
    for (int64_t j = 0; j < i; ++j) h[i * k + j] = h[j * k + i];
  }
  std::vector<float> h0 = h;
  CpuCompute().AddGram(rows, k, 2.0f, x1.data(), h.data());
  CpuCompute().AddGram(5, k, 0.5f, x2.data(), h.data());
  for (int64_t i = 0; i < k; ++i) {
    for (int64_t j = 0; j < k; ++j) {
      double want = h0[i * k + j];
      for (int64_t r = 0; r < rows; ++r) want += 2.0 * x1[r * k + i] * x1[r * k + j];
      for (int64_t r = 0; r < 5; ++r) want += 0.5 * x2[r * k + i] * x2[r * k + j];
      ASSERT_NEAR(h[i * k + j], want, 1e-4 * (1 + std::fabs(want))) << i << "," << j;
    }
  }
}

// A well-conditioned SPD matrix: AᵀA/rows + shift·I.
std::vector<float> Spd(int64_t n, uint32_t seed, double shift) {
  const int64_t rows = 2 * n;
  std::vector<float> a = Random(rows * n, seed);
  std::vector<float> h(n * n);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double acc = 0;
      for (int64_t r = 0; r < rows; ++r) acc += static_cast<double>(a[r * n + i]) * a[r * n + j];
      h[i * n + j] = static_cast<float>(acc / rows + (i == j ? shift : 0.0));
    }
  }
  return h;
}

class CholeskyTest : public ::testing::TestWithParam<int64_t> {};

TEST_P(CholeskyTest, UpperFactorOfInverse) {
  const int64_t n = GetParam();
  std::vector<float> h = Spd(n, 7 + static_cast<uint32_t>(n), 0.1);
  std::vector<float> u = h;
  ASSERT_TRUE(CpuCompute().CholeskyInverseUpper(n, u.data()).ok());
  for (int64_t i = 0; i < n; ++i) {
    EXPECT_GT(u[i * n + i], 0.0f);
    for (int64_t j = 0; j < i; ++j) ASSERT_EQ(u[i * n + j], 0.0f) << "lower triangle at " << i << "," << j;
  }
  // (UᵀU)·H = I.
  std::vector<double> utu(n * n, 0.0);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double acc = 0;
      for (int64_t l = 0; l <= std::min(i, j); ++l) acc += static_cast<double>(u[l * n + i]) * u[l * n + j];
      utu[i * n + j] = acc;
    }
  }
  double worst = 0;
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double acc = 0;
      for (int64_t l = 0; l < n; ++l) acc += utu[i * n + l] * h[l * n + j];
      worst = std::max(worst, std::fabs(acc - (i == j ? 1.0 : 0.0)));
    }
  }
  EXPECT_LT(worst, 1e-3) << "n = " << n;
}

INSTANTIATE_TEST_SUITE_P(Sizes, CholeskyTest, ::testing::Values(1, 2, 37, 128, 300));

TEST(ComputeTest, CholeskyOfTwoByTwoByHand) {
  // H = [[4, 2], [2, 3]]: H⁻¹ = [[3, -2], [-2, 4]] / 8. Upper U with UᵀU = H⁻¹:
  // U[0,0] = sqrt(3/8), U[0,1] = (-2/8) / U[0,0], U[1,1] = sqrt(4/8 - U[0,1]²).
  std::vector<float> h = {4, 2, 2, 3};
  ASSERT_TRUE(CpuCompute().CholeskyInverseUpper(2, h.data()).ok());
  const double u00 = std::sqrt(3.0 / 8), u01 = -0.25 / u00, u11 = std::sqrt(0.5 - u01 * u01);
  EXPECT_NEAR(h[0], u00, 1e-6);
  EXPECT_NEAR(h[1], u01, 1e-6);
  EXPECT_EQ(h[2], 0.0f);
  EXPECT_NEAR(h[3], u11, 1e-6);
}

TEST(ComputeTest, CholeskyRejectsMatricesThatAreNotPositiveDefinite) {
  const int64_t n = 16;
  std::vector<float> neg(n * n, 0.0f);
  for (int64_t i = 0; i < n; ++i) neg[i * n + i] = -1.0f;
  absl::Status s = CpuCompute().CholeskyInverseUpper(n, neg.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;

  std::vector<float> rank1(n * n, 1.0f);  // all ones: singular, the second pivot is exactly 0
  s = CpuCompute().CholeskyInverseUpper(n, rank1.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;

  std::vector<float> nan = Spd(n, 9, 0.1);
  nan[3 * n + 5] = nan[5 * n + 3] = std::numeric_limits<float>::quiet_NaN();
  s = CpuCompute().CholeskyInverseUpper(n, nan.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;

  std::vector<float> inf = Spd(n, 9, 0.1);
  inf[0] = std::numeric_limits<float>::infinity();
  s = CpuCompute().CholeskyInverseUpper(n, inf.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
}

}  // namespace
}  // namespace lowbit
