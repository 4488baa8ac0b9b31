// Logit comparison (KL, top-1 agreement, perplexity) against hand-worked values.
#include "calibrator/eval_metrics.h"

#include <cmath>
#include <random>

#include "gtest/gtest.h"

namespace lowbit {
namespace {

// Two tokens, vocabulary of three.
//   row 0: ref [0, 0, 0]        -> P = [1/3, 1/3, 1/3]
//          quant [ln 2, 0, 0]   -> Q = [1/2, 1/4, 1/4]
//          KL = 1/3 (ln(2/3) + 2 ln(4/3)) = 1/3 ln(32/27); argmax 0 vs 0 (tie -> first): agree
//          label 1: NLL_ref = ln 3, NLL_quant = ln 4
//   row 1: ref [ln 3, 0, 0]     -> P = [3/5, 1/5, 1/5]
//          quant [0, ln 4, 0]   -> Q = [1/6, 4/6, 1/6]
//          KL = 0.6 ln(3.6) + 0.2 ln(0.3) + 0.2 ln(1.2); argmax 0 vs 1: disagree
//          label 0: NLL_ref = ln(5/3), NLL_quant = ln 6
//   mean NLL_ref = (ln 3 + ln 5/3) / 2 = ln(5) / 2   -> PPL_ref = sqrt(5)
//   mean NLL_quant = (ln 4 + ln 6) / 2 = ln(24) / 2  -> PPL_quant = sqrt(24)
TEST(LogitComparison, HandWorkedExample) {
  const float ln2 = std::log(2.0f), ln3 = std::log(3.0f), ln4 = std::log(4.0f);
  const float ref[] = {0, 0, 0, ln3, 0, 0};
  const float quant[] = {ln2, 0, 0, 0, ln4, 0};
  const int32_t labels[] = {1, 0};
  LogitComparison c;
  ASSERT_TRUE(c.Add(ref, quant, 2, 3, labels).ok());
  LogitComparisonSummary s = c.Finish();
  const double kl0 = std::log(32.0 / 27.0) / 3.0;
  const double kl1 = 0.6 * std::log(3.6) + 0.2 * std::log(0.3) + 0.2 * std::log(1.2);
  EXPECT_EQ(s.tokens, 2);
  EXPECT_NEAR(s.kl_mean, (kl0 + kl1) / 2, 1e-6);
  EXPECT_NEAR(s.kl_max, std::max(kl0, kl1), 1e-6);
  EXPECT_NEAR(s.kl_p99, std::max(kl0, kl1), 1e-6);  // ceil(0.99 * 2) = 2nd smallest
  EXPECT_DOUBLE_EQ(s.top1_agreement, 0.5);
  EXPECT_EQ(s.labeled_tokens, 2);
  ASSERT_TRUE(s.ref_perplexity && s.quant_perplexity && s.perplexity_ratio && s.perplexity_delta);
  EXPECT_NEAR(*s.ref_nll, std::log(5.0) / 2, 1e-6);
  EXPECT_NEAR(*s.quant_nll, std::log(24.0) / 2, 1e-6);
  EXPECT_NEAR(*s.ref_perplexity, std::sqrt(5.0), 1e-5);
  EXPECT_NEAR(*s.quant_perplexity, std::sqrt(24.0), 1e-5);
  EXPECT_NEAR(*s.perplexity_ratio, std::sqrt(24.0 / 5.0), 1e-5);
  EXPECT_NEAR(*s.perplexity_delta, std::sqrt(24.0) - std::sqrt(5.0), 1e-5);
}

TEST(LogitComparison, AccumulatesAcrossCallsAndSkipsUnlabeledRows) {
  const float ln3 = std::log(3.0f), ln4 = std::log(4.0f), ln2 = std::log(2.0f);
  const float ref0[] = {0, 0, 0};
  const float quant0[] = {ln2, 0, 0};
  const float ref1[] = {ln3, 0, 0};
  const float quant1[] = {0, ln4, 0};
  const int32_t l0[] = {1};
  const int32_t none[] = {-1};
  LogitComparison c;
  ASSERT_TRUE(c.Add(ref0, quant0, 1, 3, l0).ok());
  ASSERT_TRUE(c.Add(ref1, quant1, 1, 3, none).ok());
  LogitComparisonSummary s = c.Finish();
  EXPECT_EQ(s.tokens, 2);
  EXPECT_EQ(s.labeled_tokens, 1);
  EXPECT_NEAR(*s.ref_perplexity, 3.0, 1e-5);
  EXPECT_NEAR(*s.quant_perplexity, 4.0, 1e-5);
  LogitComparison nolabels;
  ASSERT_TRUE(nolabels.Add(ref0, quant0, 1, 3, nullptr).ok());
  EXPECT_FALSE(nolabels.Finish().ref_perplexity.has_value());
}

std::vector<float> RandomLogits(int64_t rows, int64_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> n(0.0f, 3.0f);
  std::vector<float> x(rows * vocab);
  for (float& v : x) v = n(rng);
  return x;
}

TEST(LogitComparison, IdenticalLogits) {
  const int64_t rows = 16, vocab = 1000;
  std::vector<float> x = RandomLogits(rows, vocab, 1);
  std::vector<int32_t> labels(rows);
  for (int64_t r = 0; r < rows; ++r) labels[r] = static_cast<int32_t>((r * 37) % vocab);
  LogitComparison c;
  ASSERT_TRUE(c.Add(x.data(), x.data(), rows, vocab, labels.data()).ok());
  LogitComparisonSummary s = c.Finish();
  EXPECT_EQ(s.kl_mean, 0.0);
  EXPECT_EQ(s.kl_max, 0.0);
  EXPECT_EQ(s.top1_agreement, 1.0);
  EXPECT_EQ(*s.perplexity_ratio, 1.0);
  EXPECT_EQ(*s.perplexity_delta, 0.0);
  EXPECT_GT(*s.ref_perplexity, 1.0);
}

TEST(LogitComparison, ShiftedRowsHaveZeroKl) {
  const int64_t rows = 8, vocab = 500;
  std::vector<float> x = RandomLogits(rows, vocab, 2);
  std::vector<float> y = x;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t v = 0; v < vocab; ++v) y[r * vocab + v] += 100.0f * static_cast<float>(r) - 250.0f;
  std::vector<int32_t> labels(rows, 7);
  LogitComparison c;
  ASSERT_TRUE(c.Add(x.data(), y.data(), rows, vocab, labels.data()).ok());
  LogitComparisonSummary s = c.Finish();
  EXPECT_LT(s.kl_max, 1e-9);
  EXPECT_EQ(s.top1_agreement, 1.0);
  EXPECT_NEAR(*s.perplexity_ratio, 1.0, 1e-5);
  // Large logits do not overflow the softmax.
  for (float& v : y) v += 1e4f;
  LogitComparison big;
  ASSERT_TRUE(big.Add(x.data(), y.data(), rows, vocab, labels.data()).ok());
  EXPECT_LT(big.Finish().kl_max, 1e-6);
}

TEST(LogitComparison, P99IsNearestRank) {
  // 100 rows, one of them differs: ceil(0.99 * 100) = 99th smallest = 0.
  const int64_t vocab = 4;
  const float same[] = {1, 2, 3, 4};
  const float other[] = {4, 3, 2, 1};
  LogitComparison c;
  for (int i = 0; i < 99; ++i) ASSERT_TRUE(c.Add(same, same, 1, vocab, nullptr).ok());
  ASSERT_TRUE(c.Add(same, other, 1, vocab, nullptr).ok());
  LogitComparisonSummary s = c.Finish();
  EXPECT_EQ(s.kl_p99, 0.0);
  EXPECT_GT(s.kl_max, 0.0);
  EXPECT_NEAR(s.kl_mean, s.kl_max / 100.0, 1e-12);
  EXPECT_DOUBLE_EQ(s.top1_agreement, 0.99);
  // 50 rows, one differs: ceil(49.5) = 50th smallest = the maximum.
  LogitComparison d;
  for (int i = 0; i < 49; ++i) ASSERT_TRUE(d.Add(same, same, 1, vocab, nullptr).ok());
  ASSERT_TRUE(d.Add(same, other, 1, vocab, nullptr).ok());
  EXPECT_EQ(d.Finish().kl_p99, d.Finish().kl_max);
}

TEST(NearestRankPercentile, KnownDistributions) {
  std::vector<double> v;
  for (int i = 1000; i >= 1; --i) v.push_back(i);  // 1..1000, reversed
  EXPECT_EQ(NearestRankPercentile(v, 99), 990.0);
  EXPECT_EQ(NearestRankPercentile(v, 100), 1000.0);
  EXPECT_EQ(NearestRankPercentile(v, 50), 500.0);
  EXPECT_EQ(NearestRankPercentile({3, 1, 2, 4}, 50), 2.0);  // ceil(2) = 2nd smallest
  EXPECT_EQ(NearestRankPercentile({5}, 99), 5.0);
  EXPECT_EQ(NearestRankPercentile({}, 99), 0.0);
}

TEST(LogitComparison, Errors) {
  const float ok[] = {0, 1, 2};
  const float bad[] = {0, NAN, 2};
  const int32_t big[] = {3};
  const int32_t neg[] = {-2};
  LogitComparison c;
  absl::Status st = c.Add(ok, bad, 1, 3, nullptr);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("quantized model's logit at row 0, index 1"), std::string::npos) << st;
  EXPECT_FALSE(c.Add(bad, ok, 1, 3, nullptr).ok());
  EXPECT_FALSE(c.Add(ok, ok, 1, 3, big).ok());
  EXPECT_FALSE(c.Add(ok, ok, 1, 3, neg).ok());
  EXPECT_EQ(c.Finish().tokens, 0);  // nothing recorded
  ASSERT_TRUE(c.Add(ok, ok, 1, 3, nullptr).ok());
  EXPECT_FALSE(c.Add(ok, ok, 1, 2, nullptr).ok());  // vocab changed
}

}  // namespace
}  // namespace lowbit
