// GPTQ and the Hessian accumulator. Expectations come from outside the implementation:
// round-to-nearest (QuantizeLinearRtn) where GPTQ must reduce to it (H = I, failed Cholesky),
// a naive Hessian, the layer-output error ‖XWᵀ − XQᵀ‖ on correlated inputs (GPTQ's purpose),
// the structure of actorder's g_idx, and independence from the block size (the lazy block
// update is an exact reformulation). The NumPy reference comparison is in tests/python.
#include "calibrator/gptq.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <cstdio>
#include <random>

#include "calibrator/hessian.h"
#include "common/checkpoint.h"
#include "gtest/gtest.h"

namespace lowbit {
namespace {

std::vector<float> Gaussian(int64_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

// Inputs with strongly correlated channels, as LLM activations have: low rank plus noise,
// with per-channel magnitudes spread over ~1.5 decades (so activation order matters).
std::vector<float> CorrelatedInputs(int64_t tokens, int64_t k, uint32_t seed, int64_t rank = 8) {
  std::vector<float> z = Gaussian(tokens * rank, seed), a = Gaussian(rank * k, seed + 1);
  std::vector<float> noise = Gaussian(tokens * k, seed + 2, 0.05f);
  std::vector<float> x(tokens * k);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t c = 0; c < k; ++c) {
      float acc = noise[t * k + c];
      for (int64_t r = 0; r < rank; ++r) acc += z[t * rank + r] * a[r * k + c];
      x[t * k + c] = acc * (0.2f + 6.0f * static_cast<float>((c * 37) % k) / k);
    }
  }
  return x;
}

std::vector<float> HessianOf(const std::vector<float>& x, int64_t tokens, int64_t k) {
  HessianAccumulator acc(k);
  acc.Add(CpuCompute(), x.data(), tokens, /*num_sequences=*/4);
  return acc.Finish();
}

QuantArgs IntArgs(int bits, bool symmetric, int group_size, ActOrder actorder = ActOrder::kNone) {
  QuantArgs a;
  a.num_bits = bits;
  a.type = QuantType::kInt;
  a.symmetric = symmetric;
  if (group_size > 0) {
    a.group_size = group_size;
    a.strategy = Strategy::kGroup;
  } else if (group_size == -1) {
    a.group_size = -1;
    a.strategy = Strategy::kChannel;
  } else {
    a.strategy = Strategy::kTensor;
  }
  a.actorder = actorder;
  return a;
}

QuantArgs Fp8Args(Strategy strategy) {
  QuantArgs a;
  a.num_bits = 8;
  a.type = QuantType::kFloat;
  a.symmetric = true;
  a.strategy = strategy;
  if (strategy == Strategy::kChannel) a.group_size = -1;
  return a;
}

QuantizedLinear Rtn(const std::vector<float>& w, int64_t n, int64_t k, const QuantArgs& args) {
  auto q = QuantizeLinearRtn("m", Tensor::FromFloats(w, {n, k}, DType::kF32), args, DType::kF32);
  EXPECT_TRUE(q.ok()) << q.status();
  return *q;
}

GptqResult Gptq(const std::vector<float>& w, int64_t n, int64_t k, std::vector<float> h, const QuantArgs& args,
                GptqOptions options = {}) {
  auto r = QuantizeLinearGptq("m", w, n, k, std::move(h), args, DType::kF32, options, CpuCompute());
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? *std::move(r) : GptqResult{};
}

std::vector<float> Identity(int64_t k, float v = 1.0f) {
  std::vector<float> h(k * k, 0.0f);
  for (int64_t i = 0; i < k; ++i) h[i * k + i] = v;
  return h;
}

void ExpectSameCodesAsRtn(const GptqResult& g, const QuantizedLinear& rtn) {
  EXPECT_EQ(g.quantized.int_codes, rtn.int_codes);
  EXPECT_EQ(g.quantized.fp8_codes, rtn.fp8_codes);
  EXPECT_EQ(g.quantized.qparams.scale, rtn.qparams.scale);
  EXPECT_EQ(g.quantized.qparams.zero_point, rtn.qparams.zero_point);
  EXPECT_EQ(g.quantized.qparams.groups, rtn.qparams.groups);
  EXPECT_EQ(g.quantized.qparams.cell_rows, rtn.qparams.cell_rows);
  EXPECT_EQ(g.dequantized, DequantizeLinear(rtn));
}

// ---- Hessian ---------------------------------------------------------------------------------

TEST(HessianTest, TwoOverSequencesTimesSumOfOuterProducts) {
  const int64_t k = 24;
  std::vector<float> x1 = Gaussian(10 * k, 1), x2 = Gaussian(6 * k, 2);
  HessianAccumulator acc(k);
  acc.Add(CpuCompute(), x1.data(), 10, 2);  // 2 sequences of 5 tokens
  acc.Add(CpuCompute(), x2.data(), 6, 3);   // 3 sequences of 2 tokens
  EXPECT_EQ(acc.num_sequences(), 5);
  std::vector<float> h = acc.Finish();
  ASSERT_EQ(h.size(), static_cast<size_t>(k * k));
  for (int64_t i = 0; i < k; ++i) {
    for (int64_t j = 0; j < k; ++j) {
      double s = 0;
      for (int64_t t = 0; t < 10; ++t) s += static_cast<double>(x1[t * k + i]) * x1[t * k + j];
      for (int64_t t = 0; t < 6; ++t) s += static_cast<double>(x2[t * k + i]) * x2[t * k + j];
      double want = 2.0 * s / 5.0;
      ASSERT_NEAR(h[i * k + j], want, 1e-5 * (1 + std::fabs(want))) << i << "," << j;
    }
  }
}

TEST(HessianTest, EmptyIsZero) {
  HessianAccumulator acc(3);
  EXPECT_EQ(acc.num_sequences(), 0);
  EXPECT_EQ(acc.Finish(), std::vector<float>(9, 0.0f));
}

// ---- H = I: nothing to propagate, GPTQ is round-to-nearest -----------------------------------

struct RtnCase {
  std::string name;
  QuantArgs args;
};

class IdentityHessianTest : public ::testing::TestWithParam<RtnCase> {};

TEST_P(IdentityHessianTest, GivesRtnCodes) {
  const int64_t n = 48, k = 256;
  std::vector<float> w = Gaussian(n * k, 11, 0.05f);
  w[3 * k + 7] = 0.4f;  // an outlier, so clipping at the range end is exercised
  GptqResult g = Gptq(w, n, k, Identity(k), GetParam().args);
  EXPECT_FALSE(g.fell_back_to_rtn);
  EXPECT_TRUE(g.warning.empty()) << g.warning;
  ExpectSameCodesAsRtn(g, Rtn(w, n, k, GetParam().args));
  // H = I, damp 0.01: d² = 1 / 1.01 for every column, so loss = 1.01/2 · Σ (w − q)².
  double sq = 0;
  for (int64_t i = 0; i < n * k; ++i) sq += std::pow(static_cast<double>(w[i]) - g.dequantized[i], 2);
  EXPECT_NEAR(g.loss, 1.01 / 2 * sq, 1e-4 * sq);
}

INSTANTIATE_TEST_SUITE_P(
    Schemes, IdentityHessianTest,
    ::testing::Values(RtnCase{"w4_g32_sym", IntArgs(4, true, 32)}, RtnCase{"w4_g128_asym", IntArgs(4, false, 128)},
                      RtnCase{"w4_g64_sym_actorder_weight", IntArgs(4, true, 64, ActOrder::kWeight)},
                      RtnCase{"w8_channel_sym", IntArgs(8, true, -1)}, RtnCase{"w8_channel_asym", IntArgs(8, false, -1)},
                      RtnCase{"w8_tensor_sym", IntArgs(8, true, 0)}, RtnCase{"w4_tensor_asym", IntArgs(4, false, 0)},
                      RtnCase{"fp8_channel", Fp8Args(Strategy::kChannel)},
                      RtnCase{"fp8_tensor", Fp8Args(Strategy::kTensor)}),
    [](const auto& info) { return info.param.name; });

// ---- Correlated inputs: GPTQ must beat round-to-nearest on the layer output ------------------

struct BeatCase {
  std::string name;
  QuantArgs args;
  double max_ratio;  // GPTQ output error / RTN output error must stay below this
};

class CorrelatedInputsTest : public ::testing::TestWithParam<BeatCase> {};

TEST_P(CorrelatedInputsTest, LowerOutputErrorThanRtn) {
  const int64_t n = 96, k = 256, tokens = 1024;
  std::vector<float> x = CorrelatedInputs(tokens, k, 21);
  std::vector<float> w = Gaussian(n * k, 22, 0.05f);
  const QuantArgs& args = GetParam().args;
  GptqResult g = Gptq(w, n, k, HessianOf(x, tokens, k), args);
  ASSERT_FALSE(g.fell_back_to_rtn) << g.warning;
  QuantizedLinear rtn = Rtn(w, n, k, args);
  // The codes are the layer's: dequantizing them gives what GPTQ says the layer runs with.
  EXPECT_EQ(DequantizeLinear(g.quantized), g.dequantized);
  double e_gptq = OutputError(CpuCompute(), x, tokens, w, g.dequantized, n, k);
  double e_rtn = OutputError(CpuCompute(), x, tokens, w, DequantizeLinear(rtn), n, k);
  EXPECT_LT(e_gptq, GetParam().max_ratio * e_rtn) << "gptq " << e_gptq << " rtn " << e_rtn;
  std::printf("%s: output error gptq / rtn = %.3f\n", GetParam().name.c_str(), e_gptq / e_rtn);
  EXPECT_GT(g.loss, 0.0);
  EXPECT_GT(g.seconds, 0.0);
}

INSTANTIATE_TEST_SUITE_P(
    Schemes, CorrelatedInputsTest,
    ::testing::Values(BeatCase{"w4_g128_sym", IntArgs(4, true, 128), 0.5},
                      BeatCase{"w4_g128_asym", IntArgs(4, false, 128), 0.5},
                      BeatCase{"w4_g128_sym_actorder_weight", IntArgs(4, true, 128, ActOrder::kWeight), 0.5},
                      BeatCase{"w4_g128_sym_actorder_group", IntArgs(4, true, 128, ActOrder::kGroup), 0.5},
                      BeatCase{"w8_channel_sym", IntArgs(8, true, -1), 0.5},
                      BeatCase{"w8_channel_sym_actorder_weight", IntArgs(8, true, -1, ActOrder::kWeight), 0.5},
                      BeatCase{"fp8_channel", Fp8Args(Strategy::kChannel), 0.5}),
    [](const auto& info) { return info.param.name; });

TEST(GptqTest, LazyBlockUpdateMatchesColumnByColumn) {
  // Blocks only regroup the same updates: block sizes 1, 7 (not dividing K) and 128 must give
  // the same result up to float rounding (a code may flip where a value sits on a tie).
  const int64_t n = 64, k = 256, tokens = 512;
  std::vector<float> x = CorrelatedInputs(tokens, k, 31);
  std::vector<float> w = Gaussian(n * k, 32, 0.05f);
  std::vector<float> h = HessianOf(x, tokens, k);
  QuantArgs args = IntArgs(4, false, 64, ActOrder::kWeight);
  GptqResult ref = Gptq(w, n, k, h, args, GptqOptions{.block_size = 1});
  for (int64_t bs : {7, 128, 1000}) {
    GptqResult g = Gptq(w, n, k, h, args, GptqOptions{.block_size = bs});
    int64_t differ = 0;
    for (int64_t i = 0; i < n * k; ++i) differ += g.quantized.int_codes[i] != ref.quantized.int_codes[i];
    EXPECT_LE(differ, n * k / 200) << "block size " << bs;
    EXPECT_NEAR(g.loss, ref.loss, 0.02 * ref.loss) << "block size " << bs;
  }
}

TEST(GptqTest, ActorderWeightProcessesLargeDiagonalFirstAndKeepsOriginalGroups) {
  // With a diagonal H there is no propagation: whatever the order, every column is rounded
  // with its own (original) group's scale, so codes equal RTN's and no g_idx is saved.
  const int64_t n = 16, k = 128;
  std::vector<float> w = Gaussian(n * k, 41, 0.05f);
  std::vector<float> h(k * k, 0.0f);
  for (int64_t i = 0; i < k; ++i) h[i * k + i] = 1.0f + static_cast<float>((i * 53) % k);
  QuantArgs args = IntArgs(4, true, 32, ActOrder::kWeight);
  GptqResult g = Gptq(w, n, k, h, args);
  EXPECT_TRUE(g.quantized.g_idx.empty());
  ExpectSameCodesAsRtn(g, Rtn(w, n, k, args));
}

TEST(GptqTest, ActorderGroupSavesGIdxOverDiagonalOrder) {
  const int64_t n = 32, k = 128, gs = 32;
  std::vector<float> w = Gaussian(n * k, 51, 0.05f);
  std::vector<float> h(k * k, 0.0f);
  for (int64_t i = 0; i < k; ++i) h[i * k + i] = 1.0f + static_cast<float>((i * 53) % k);  // distinct
  QuantArgs args = IntArgs(4, true, gs, ActOrder::kGroup);
  GptqResult g = Gptq(w, n, k, h, args);
  ASSERT_EQ(g.quantized.g_idx.size(), static_cast<size_t>(k));
  // Rank of each column by descending diagonal, computed here by counting.
  std::vector<float> scale_ref(n * (k / gs));
  for (int64_t c = 0; c < k; ++c) {
    int64_t rank = 0;
    for (int64_t o = 0; o < k; ++o) rank += h[o * k + o] > h[c * k + c];
    EXPECT_EQ(g.quantized.g_idx[c], rank / gs) << "column " << c;
  }
  // Each group's scale comes from its own columns (those of largest diagonals first).
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t grp = 0; grp < k / gs; ++grp) {
      float absmax = 0;
      for (int64_t c = 0; c < k; ++c) {
        if (g.quantized.g_idx[c] == grp) absmax = std::max(absmax, std::fabs(w[r * k + c]));
      }
      EXPECT_FLOAT_EQ(g.quantized.qparams.at(r, grp).scale, absmax / 7.5f);
    }
  }
  // Diagonal H: codes are the plain rounding of each weight with its g_idx group.
  EXPECT_EQ(g.dequantized, DequantizeLinear(g.quantized));
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t c = 0; c < k; ++c) {
      QParam p = g.quantized.qparams.at(r, g.quantized.g_idx[c]);
      ASSERT_EQ(g.quantized.int_codes[r * k + c], QuantizeInt(w[r * k + c], p, -8, 7)) << r << "," << c;
    }
  }
  // It encodes like RTN output, with the g_idx tensor.
  auto tensors = EncodeLinear(g.quantized, "pack-quantized", DType::kBF16);
  ASSERT_TRUE(tensors.ok()) << tensors.status();
  bool has_g_idx = false;
  for (const auto& t : *tensors) has_g_idx |= t.name == "m.weight_g_idx";
  EXPECT_TRUE(has_g_idx);
}

TEST(GptqTest, ActorderGroupOnChannelStrategyFallsBackToNoActorder) {
  const int64_t n = 8, k = 64;
  std::vector<float> w = Gaussian(n * k, 61, 0.05f);
  GptqResult g = Gptq(w, n, k, Identity(k), IntArgs(8, true, -1, ActOrder::kGroup));
  EXPECT_TRUE(g.quantized.g_idx.empty());
  EXPECT_NE(g.warning.find("actorder"), std::string::npos) << g.warning;
  ExpectSameCodesAsRtn(g, Rtn(w, n, k, IntArgs(8, true, -1)));
}

TEST(GptqTest, DeadColumnsAreZeroed) {
  const int64_t n = 40, k = 128, tokens = 256;
  std::vector<float> x = CorrelatedInputs(tokens, k, 71);
  for (int64_t t = 0; t < tokens; ++t) x[t * k + 5] = x[t * k + 100] = 0.0f;  // inputs never active
  std::vector<float> w = Gaussian(n * k, 72, 0.05f);
  for (ActOrder order : {ActOrder::kNone, ActOrder::kWeight, ActOrder::kGroup}) {
    QuantArgs args = IntArgs(4, false, 32, order);
    GptqResult g = Gptq(w, n, k, HessianOf(x, tokens, k), args);
    ASSERT_FALSE(g.fell_back_to_rtn) << g.warning;
    int64_t live_nonzero = 0;  // a live column is not zeroed
    for (int64_t r = 0; r < n; ++r) {
      live_nonzero += g.dequantized[r * k + 6] != 0.0f;
      for (int64_t c : {5, 100}) {
        EXPECT_EQ(g.dequantized[r * k + c], 0.0f) << r << "," << c;
        int64_t grp = g.quantized.g_idx.empty() ? c / 32 : g.quantized.g_idx[c];
        EXPECT_EQ(g.quantized.int_codes[r * k + c], g.quantized.qparams.at(r, grp).zero_point);
      }
    }
    EXPECT_GT(live_nonzero, n / 2);
    // The scales still come from the original weight, dead columns included.
    if (order != ActOrder::kGroup) {
      EXPECT_EQ(g.quantized.qparams.scale, Rtn(w, n, k, args).qparams.scale);
    }
  }
}

// ---- Cholesky failure: U = I, i.e. round-to-nearest, with a warning --------------------------

TEST(GptqTest, CholeskyFailureFallsBackToRtn) {
  const int64_t n = 24, k = 64;
  std::vector<float> w = Gaussian(n * k, 81, 0.05f);
  QuantArgs args = IntArgs(4, true, 32);
  QuantizedLinear rtn = Rtn(w, n, k, args);

  std::vector<float> nan_h = Identity(k);
  nan_h[2 * k + 9] = nan_h[9 * k + 2] = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> rank_one(k * k, 1.0f);  // singular; with dampening 0 its Cholesky fails

  struct Case {
    std::string name;
    std::vector<float> h;
    double damp;
  };
  for (const Case& c : {Case{"negative", Identity(k, -1.0f), 0.01}, Case{"nan", nan_h, 0.01},
                        Case{"rank_one_no_damp", rank_one, 0.0}}) {
    SCOPED_TRACE(c.name);
    GptqResult g = Gptq(w, n, k, c.h, args, GptqOptions{.dampening_frac = c.damp});
    EXPECT_TRUE(g.fell_back_to_rtn);
    EXPECT_NE(g.warning.find("round-to-nearest"), std::string::npos) << g.warning;
    ExpectSameCodesAsRtn(g, rtn);
  }
  // The same rank-one H with the default dampening factors fine.
  GptqResult ok = Gptq(w, n, k, rank_one, args);
  EXPECT_FALSE(ok.fell_back_to_rtn) << ok.warning;
}

// ---- Errors ----------------------------------------------------------------------------------

TEST(GptqTest, RejectsBadShapesAndGroupSizes) {
  const int64_t n = 8, k = 96;
  std::vector<float> w = Gaussian(n * k, 91);
  auto run = [&](std::span<const float> weight, std::vector<float> h, const QuantArgs& args, GptqOptions o = {}) {
    return QuantizeLinearGptq("model.layers.0.mlp.down_proj", weight, n, k, std::move(h), args, DType::kBF16, o,
                              CpuCompute())
        .status();
  };
  absl::Status s = run(w, Identity(k), IntArgs(4, true, 64));  // 64 does not divide 96
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("group_size 64"), absl::string_view::npos) << s;
  EXPECT_NE(s.message().find("down_proj"), absl::string_view::npos) << s;

  s = run(w, Identity(k - 1), IntArgs(4, true, 32));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("Hessian"), absl::string_view::npos) << s;

  s = run(std::span<const float>(w).subspan(1), Identity(k), IntArgs(4, true, 32));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;

  s = run(w, Identity(k), IntArgs(4, true, 32), GptqOptions{.block_size = 0});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;

  std::vector<float> bad = w;
  bad[17] = std::numeric_limits<float>::infinity();
  s = run(bad, Identity(k), IntArgs(4, true, 32));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;

  EXPECT_TRUE(run(w, Identity(k), IntArgs(4, true, 32)).ok());
}

TEST(GptqTest, OutputErrorByHand) {
  // X = [[1, 2]], A = [[1, 0], [0, 1]], B = 0: X·Aᵀ = [1, 2], norm sqrt(5).
  std::vector<float> x = {1, 2}, a = {1, 0, 0, 1}, b = {0, 0, 0, 0};
  EXPECT_NEAR(OutputError(CpuCompute(), x, 1, a, b, 2, 2), std::sqrt(5.0), 1e-6);
  // tr(D H Dᵀ) with D = A, H = [[2, 1], [1, 3]]: 2 + 3.
  std::vector<float> h = {2, 1, 1, 3};
  EXPECT_NEAR(HessianWeightedError(CpuCompute(), h, a, b, 2, 2), 5.0, 1e-6);
}

}  // namespace
}  // namespace lowbit
