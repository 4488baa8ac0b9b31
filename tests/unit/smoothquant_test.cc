// SmoothQuant statistics, scales, folding and mapping resolution against hand-worked values
// from llm-compressor's formula (shared/reference/llm-compressor-algorithms.md §3.2).
#include "calibrator/smoothquant.h"

#include <algorithm>
#include <cmath>
#include <random>

#include "gtest/gtest.h"

namespace lowbit {
namespace {

LinearWeights MakeLinear(int64_t out, int64_t in, std::vector<float> w) {
  LinearWeights l;
  l.out = out;
  l.in = in;
  l.weight = std::move(w);
  return l;
}

TEST(ChannelRange, KeepsMinAndMaxPerChannel) {
  ChannelRange r;
  const float a[] = {1, -2, 3, 4, 5, -6};  // [2, 3]
  ASSERT_TRUE(r.Update(a, 2, 3).ok());
  const float b[] = {-7, 8, 0.5f};
  ASSERT_TRUE(r.Update(b, 1, 3).ok());
  EXPECT_EQ(r.rows_seen, 3);
  EXPECT_EQ(r.min, (std::vector<float>{-7, -2, -6}));
  EXPECT_EQ(r.max, (std::vector<float>{4, 8, 3}));
  EXPECT_FALSE(r.Update(b, 1, 2).ok());  // width changed
}

TEST(ChannelRange, IgnoresNan) {
  ChannelRange r;
  const float a[] = {NAN, 1, 2, NAN};
  ASSERT_TRUE(r.Update(a, 2, 2).ok());
  EXPECT_EQ(r.min, (std::vector<float>{2, 1}));
  EXPECT_EQ(r.max, (std::vector<float>{2, 1}));
}

// Four channels, two balance Linears (A [2, 4], B [1, 4]):
//   ch0: act [-1, 3] -> range 4;  max|W| = 2 (B)       -> w_range 4
//   ch1: act [-4, 5] -> range 9;  max|W| = 0.25 (A)    -> w_range 0.5
//   ch2: act [1, 7]  -> range 6;  W column all zero    -> w_range 0 -> s = act_range = 6
//   ch3: act [2, 2]  -> range 0;  max|W| = 1           -> s = 0 -> clamped to 1e-5
struct Fixture {
  ChannelRange act;
  LinearWeights a = MakeLinear(2, 4, {0.5f, -0.25f, 0, 1, -1, 0.125f, 0, -0.5f});
  LinearWeights b = MakeLinear(1, 4, {2, 0.25f, 0, 0});
  Fixture() {
    const float x[] = {-1, -4, 1, 2, 3, 5, 7, 2};
    EXPECT_TRUE(act.Update(x, 2, 4).ok());
  }
};

TEST(SmoothingScales, HandComputedAlphaHalf) {
  Fixture f;
  const LinearWeights* bal[] = {&f.a, &f.b};
  auto s = SmoothingScales(f.act, bal, 0.5, SmoothingAlgorithm::kSmoothQuant);
  ASSERT_TRUE(s.ok()) << s.status();
  ASSERT_EQ(s->size(), 4u);
  EXPECT_FLOAT_EQ((*s)[0], 1.0f);                          // sqrt(4) / sqrt(4)
  EXPECT_FLOAT_EQ((*s)[1], 3.0f / std::sqrt(0.5f));        // sqrt(9) / sqrt(0.5)
  EXPECT_FLOAT_EQ((*s)[2], 6.0f);                          // w_range == 0 -> act_range
  EXPECT_FLOAT_EQ((*s)[3], 1e-5f);                         // 0 clamped
}

TEST(SmoothingScales, HandComputedAlpha08) {
  Fixture f;
  const LinearWeights* bal[] = {&f.a, &f.b};
  auto s = SmoothingScales(f.act, bal, 0.8, SmoothingAlgorithm::kSmoothQuant);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_FLOAT_EQ((*s)[0], std::pow(4.0f, 0.8f) / std::pow(4.0f, 0.2f));
  EXPECT_FLOAT_EQ((*s)[1], std::pow(9.0f, 0.8f) / std::pow(0.5f, 0.2f));
  EXPECT_FLOAT_EQ((*s)[2], 6.0f);
  EXPECT_FLOAT_EQ((*s)[3], 1e-5f);
}

TEST(SmoothingScales, WeightRangeIsTwiceAbsmaxOverAllBalanceLayers) {
  // Only A: ch0's max|W| drops to 1 (w_range 2): s0 = sqrt(4) / sqrt(2).
  Fixture f;
  const LinearWeights* bal[] = {&f.a};
  auto s = SmoothingScales(f.act, bal, 0.5, SmoothingAlgorithm::kSmoothQuant);
  ASSERT_TRUE(s.ok());
  EXPECT_FLOAT_EQ((*s)[0], 2.0f / std::sqrt(2.0f));
}

TEST(SmoothingScales, LogEqualization) {
  // s = act_range / log2(2 + act_range): 4/log2(6), 9/log2(11), 6/log2(8) = 2, 0 -> 1e-5.
  Fixture f;
  const LinearWeights* bal[] = {&f.a, &f.b};
  auto s = SmoothingScales(f.act, bal, 0.5, SmoothingAlgorithm::kLogEqualization);
  ASSERT_TRUE(s.ok());
  EXPECT_FLOAT_EQ((*s)[0], 4.0f / std::log2(6.0f));
  EXPECT_FLOAT_EQ((*s)[1], 9.0f / std::log2(11.0f));
  EXPECT_FLOAT_EQ((*s)[2], 2.0f);
  EXPECT_FLOAT_EQ((*s)[3], 1e-5f);
}

TEST(SmoothingScales, Errors) {
  Fixture f;
  const LinearWeights* bal[] = {&f.a};
  ChannelRange empty;
  EXPECT_FALSE(SmoothingScales(empty, bal, 0.5, SmoothingAlgorithm::kSmoothQuant).ok());
  EXPECT_FALSE(SmoothingScales(f.act, bal, 1.5, SmoothingAlgorithm::kSmoothQuant).ok());
  EXPECT_FALSE(SmoothingScales(f.act, {}, 0.5, SmoothingAlgorithm::kSmoothQuant).ok());
  LinearWeights narrow = MakeLinear(1, 3, {1, 2, 3});
  const LinearWeights* bad[] = {&narrow};
  auto s = SmoothingScales(f.act, bad, 0.5, SmoothingAlgorithm::kSmoothQuant);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("4 channels"), std::string::npos) << s.status();
}

TEST(ApplySmoothing, DividesNormAndScalesColumns) {
  std::vector<float> norm = {2, 4};
  LinearWeights w = MakeLinear(2, 2, {1, 1, 3, 5});
  LinearWeights* bal[] = {&w};
  const float s[] = {2, 0.5f};
  ASSERT_TRUE(ApplySmoothing(s, norm, bal).ok());
  EXPECT_EQ(norm, (std::vector<float>{1, 8}));
  EXPECT_EQ(w.weight, (std::vector<float>{2, 0.5f, 6, 2.5f}));
  // Size mismatch changes nothing.
  std::vector<float> norm3 = {1, 1, 1};
  EXPECT_FALSE(ApplySmoothing(s, norm3, bal).ok());
  EXPECT_EQ(norm3, (std::vector<float>{1, 1, 1}));
  const float zero[] = {0, 1};
  EXPECT_FALSE(ApplySmoothing(zero, norm, bal).ok());
}

// Random activations with two outlier channels.
std::vector<float> Activations(int64_t rows, int64_t hidden, std::mt19937& rng) {
  std::normal_distribution<float> n(0.0f, 1.0f);
  std::vector<float> x(rows * hidden);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < hidden; ++c) {
      float v = n(rng);
      if (c == 3) v = v * 40.0f + 10.0f;  // skewed outlier
      if (c == 11) v *= 90.0f;
      x[r * hidden + c] = v;
    }
  }
  return x;
}

// Y[r, o] = sum_j (x[r, j] * g[j]) * W[o, j], in double.
std::vector<double> NormThenLinear(const std::vector<float>& x, const std::vector<float>& g, const LinearWeights& w,
                                   int64_t rows) {
  std::vector<double> y(rows * w.out, 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t o = 0; o < w.out; ++o) {
      double acc = 0;
      for (int64_t j = 0; j < w.in; ++j) {
        acc += static_cast<double>(x[r * w.in + j] * g[j]) * w.weight[o * w.in + j];
      }
      y[r * w.out + o] = acc;
    }
  }
  return y;
}

TEST(Smoothing, LeavesTheLayerFunctionUnchanged) {
  std::mt19937 rng(7);
  const int64_t rows = 64, hidden = 32;
  std::vector<float> x = Activations(rows, hidden, rng);
  std::normal_distribution<float> n(0.0f, 1.0f);
  std::vector<float> g(hidden);
  for (float& v : g) v = 1.0f + 0.3f * n(rng);
  std::vector<LinearWeights> ws;
  for (int64_t out : {24, 8, 16}) {
    LinearWeights w = MakeLinear(out, hidden, std::vector<float>(out * hidden));
    for (float& v : w.weight) v = 0.05f * n(rng);
    ws.push_back(std::move(w));
  }
  // Statistics of the norm output x * g.
  std::vector<float> normed(x.size());
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < hidden; ++j) normed[r * hidden + j] = x[r * hidden + j] * g[j];
  ChannelRange act;
  ASSERT_TRUE(act.Update(normed.data(), rows, hidden).ok());

  std::vector<std::vector<double>> before;
  for (const LinearWeights& w : ws) before.push_back(NormThenLinear(x, g, w, rows));
  std::vector<const LinearWeights*> cbal;
  std::vector<LinearWeights*> bal;
  for (LinearWeights& w : ws) {
    cbal.push_back(&w);
    bal.push_back(&w);
  }
  auto s = SmoothingScales(act, cbal, 0.8, SmoothingAlgorithm::kSmoothQuant);
  ASSERT_TRUE(s.ok());
  // The scales are far from 1 on the outlier channels, so the check below is not trivial.
  EXPECT_GT(*std::max_element(s->begin(), s->end()) / *std::min_element(s->begin(), s->end()), 10.0f);
  std::vector<float> g2 = g;
  ASSERT_TRUE(ApplySmoothing(*s, g2, bal).ok());
  for (size_t k = 0; k < ws.size(); ++k) {
    std::vector<double> after = NormThenLinear(x, g2, ws[k], rows);
    double max_abs = 0, max_err = 0;
    for (size_t i = 0; i < after.size(); ++i) {
      max_abs = std::max(max_abs, std::fabs(before[k][i]));
      max_err = std::max(max_err, std::fabs(after[i] - before[k][i]));
    }
    EXPECT_LT(max_err, 1e-5 * max_abs) << "balance layer " << k;
  }
}

double MaxOverMedianAbsmax(const std::vector<float>& x, int64_t rows, int64_t hidden) {
  std::vector<double> absmax(hidden, 0.0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < hidden; ++j) absmax[j] = std::max(absmax[j], std::fabs(double{x[r * hidden + j]}));
  std::vector<double> sorted = absmax;
  std::sort(sorted.begin(), sorted.end());
  return sorted.back() / sorted[hidden / 2];
}

TEST(Smoothing, ShrinksOutlierChannels) {
  std::mt19937 rng(11);
  const int64_t rows = 128, hidden = 32;
  std::vector<float> x = Activations(rows, hidden, rng);
  std::normal_distribution<float> n(0.0f, 0.02f);
  LinearWeights w = MakeLinear(16, hidden, std::vector<float>(16 * hidden));
  for (float& v : w.weight) v = n(rng);
  ChannelRange act;
  ASSERT_TRUE(act.Update(x.data(), rows, hidden).ok());
  const LinearWeights* bal[] = {&w};
  auto s = SmoothingScales(act, bal, 0.5, SmoothingAlgorithm::kSmoothQuant);
  ASSERT_TRUE(s.ok());
  std::vector<float> smoothed = x;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < hidden; ++j) smoothed[r * hidden + j] /= (*s)[j];
  double before = MaxOverMedianAbsmax(x, rows, hidden);
  double after = MaxOverMedianAbsmax(smoothed, rows, hidden);
  EXPECT_GT(before, 20.0);
  EXPECT_LT(after, before / 5.0) << "before " << before << " after " << after;
}

DecoderLayerWeights TinyLayer(int64_t hidden, int64_t inter) {
  DecoderLayerWeights l;
  l.input_layernorm.assign(hidden, 1.0f);
  l.post_attention_layernorm.assign(hidden, 1.0f);
  auto lin = [](int64_t out, int64_t in) { return MakeLinear(out, in, std::vector<float>(out * in, 0.5f)); };
  l.q_proj = lin(hidden, hidden);
  l.k_proj = lin(hidden / 2, hidden);
  l.v_proj = lin(hidden / 2, hidden);
  l.o_proj = lin(hidden, hidden);
  l.gate_proj = lin(inter, hidden);
  l.up_proj = lin(inter, hidden);
  l.down_proj = lin(hidden, inter);
  return l;
}

TEST(SmoothLayer, FoldsIntoTheMappedWeights) {
  DecoderLayerWeights l = TinyLayer(4, 6);
  LayerSmoothMapping m{"post_attention_layernorm", {"mlp.gate_proj", "mlp.up_proj"}, LinearSite::kMlpInput, 1};
  ChannelRange act;
  const float x[] = {-2, 0, 1, 8, 2, 4, 1, 0};  // ranges 4, 4, 0, 8
  ASSERT_TRUE(act.Update(x, 2, 4).ok());
  // w_range = 2 * 0.5 = 1, alpha 1: s = act_range (0 -> 1e-5).
  auto s = SmoothLayer(m, act, 1.0, SmoothingAlgorithm::kSmoothQuant, l);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(*s, (std::vector<float>{4, 4, 1e-5f, 8}));
  EXPECT_FLOAT_EQ(l.post_attention_layernorm[3], 1.0f / 8.0f);
  EXPECT_FLOAT_EQ(l.gate_proj.weight[3], 4.0f);
  EXPECT_FLOAT_EQ(l.up_proj.weight[4 + 1], 2.0f);
  EXPECT_EQ(l.input_layernorm, (std::vector<float>(4, 1.0f)));  // untouched
  EXPECT_EQ(l.q_proj.weight[3], 0.5f);
}

// ---- mapping resolution ----

TEST(ResolveMappings, DefaultMappings) {
  SmoothQuantPlan plan;
  auto r = ResolveLayerSmoothMappings(plan, "model.layers.3.");
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->size(), 2u);
  EXPECT_EQ((*r)[0], (LayerSmoothMapping{"input_layernorm",
                                         {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"},
                                         LinearSite::kAttentionInput,
                                         0}));
  EXPECT_EQ((*r)[1],
            (LayerSmoothMapping{"post_attention_layernorm", {"mlp.gate_proj", "mlp.up_proj"}, LinearSite::kMlpInput, 1}));
  // The prefix without its trailing dot works the same.
  auto r2 = ResolveLayerSmoothMappings(plan, "model.layers.3");
  ASSERT_TRUE(r2.ok());
  EXPECT_EQ(*r, *r2);
}

SmoothQuantPlan Plan(std::vector<SmoothQuantMapping> mappings, std::vector<std::string> ignore = {}) {
  SmoothQuantPlan p;
  p.mappings = std::move(mappings);
  p.default_mappings = false;
  p.ignore = std::move(ignore);
  return p;
}

std::string ErrorOf(const SmoothQuantPlan& plan, std::string_view prefix = "model.layers.0.") {
  auto r = ResolveLayerSmoothMappings(plan, prefix);
  return r.ok() ? "OK" : std::string(r.status().message());
}

TEST(ResolveMappings, CustomExactNamesAndRegexes) {
  // Exact full names only match in their own layer.
  SmoothQuantPlan p = Plan({{{"model.layers.5.self_attn.q_proj", "model.layers.5.self_attn.k_proj",
                              "re:.*self_attn\\.v_proj$"},
                             "model.layers.5.input_layernorm"}});
  auto r = ResolveLayerSmoothMappings(p, "model.layers.5.");
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->size(), 1u);
  EXPECT_EQ((*r)[0].smooth, "input_layernorm");
  EXPECT_EQ((*r)[0].site, LinearSite::kAttentionInput);
  EXPECT_EQ((*r)[0].balance.size(), 3u);
  EXPECT_NE(ErrorOf(p, "model.layers.6.").find("matches no module"), std::string::npos);

  // One regex naming both MLP inputs; a balance Linear named twice is listed once.
  SmoothQuantPlan q = Plan({{{"re:.*(gate|up)_proj", "re:.*up_proj"}, "re:.*post_attention_layernorm"}});
  auto rq = ResolveLayerSmoothMappings(q, "model.layers.0.");
  ASSERT_TRUE(rq.ok()) << rq.status();
  EXPECT_EQ((*rq)[0].balance, (std::vector<std::string>{"mlp.gate_proj", "mlp.up_proj"}));
}

TEST(ResolveMappings, Ignore) {
  const std::vector<SmoothQuantMapping> defaults = DefaultSmoothQuantMappings();
  // Every layer of the MLP mapping ignored -> skipped.
  auto r = ResolveLayerSmoothMappings(
      Plan(defaults, {"re:.*post_attention_layernorm", "re:.*gate_proj", "re:.*up_proj"}), "model.layers.0.");
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->size(), 1u);
  EXPECT_EQ((*r)[0].smooth, "input_layernorm");
  // Only part of it ignored -> still applied in full.
  auto r2 = ResolveLayerSmoothMappings(Plan(defaults, {"re:.*gate_proj"}), "model.layers.0.");
  ASSERT_TRUE(r2.ok());
  ASSERT_EQ(r2->size(), 2u);
  EXPECT_EQ((*r2)[1].balance, (std::vector<std::string>{"mlp.gate_proj", "mlp.up_proj"}));
  // Ignoring by layer name skips both mappings of that layer only.
  auto r3 = ResolveLayerSmoothMappings(Plan(defaults, {"re:model\\.layers\\.0\\."}), "model.layers.0.");
  ASSERT_TRUE(r3.ok());
  EXPECT_TRUE(r3->empty());
  auto r4 = ResolveLayerSmoothMappings(Plan(defaults, {"re:model\\.layers\\.0\\."}), "model.layers.1.");
  ASSERT_TRUE(r4.ok());
  EXPECT_EQ(r4->size(), 2u);
}

TEST(ResolveMappings, Errors) {
  // Smooth target matching both norms.
  EXPECT_NE(ErrorOf(Plan({{{"re:.*q_proj"}, "re:.*layernorm"}})).find("more than one module"), std::string::npos);
  // Class-name smooth target also matches both norms.
  EXPECT_NE(ErrorOf(Plan({{{"re:.*q_proj"}, "LlamaRMSNorm"}})).find("more than one module"), std::string::npos);
  // AWQ-style v_proj -> o_proj: not a norm.
  std::string e = ErrorOf(Plan({{{"re:.*o_proj"}, "re:.*v_proj"}}));
  EXPECT_NE(e.find("smooth layer model.layers.0.self_attn.v_proj is not a norm feeding Linears Lowbit can smooth"),
            std::string::npos)
      << e;
  // A container as smooth layer.
  EXPECT_NE(ErrorOf(Plan({{{"re:.*q_proj"}, "re:.*self_attn$"}})).find("is not a norm"), std::string::npos);
  // Smooth target matching nothing names the target.
  e = ErrorOf(Plan({{{"re:.*q_proj"}, "re:.*ln_1"}}));
  EXPECT_NE(e.find("'re:.*ln_1' matches no module"), std::string::npos) << e;
  // Balance target matching nothing names it.
  e = ErrorOf(Plan({{{"re:.*q_proj", "re:.*k_proj", "re:.*v_proj", "re:.*qkv_proj"}, "re:.*input_layernorm"}}));
  EXPECT_NE(e.find("'re:.*qkv_proj' matches no Linear"), std::string::npos) << e;
  // Balance target matching a non-Linear.
  EXPECT_NE(ErrorOf(Plan({{{"re:.*mlp$"}, "re:.*post_attention_layernorm"}})).find("not a Linear"), std::string::npos);
  // A balance Linear that does not read the norm.
  e = ErrorOf(Plan({{{"re:.*q_proj", "re:.*k_proj", "re:.*v_proj", "re:.*o_proj"}, "re:.*input_layernorm"}}));
  EXPECT_NE(e.find("self_attn.o_proj does not read the output of model.layers.0.input_layernorm"), std::string::npos)
      << e;
  // Class "Linear" as balance target takes all seven Linears, most of which do not read the norm.
  EXPECT_NE(ErrorOf(Plan({{{"Linear"}, "re:.*input_layernorm"}})).find("does not read"), std::string::npos);
  // A reader of the norm left out of the mapping.
  e = ErrorOf(Plan({{{"re:.*q_proj", "re:.*k_proj"}, "re:.*input_layernorm"}}));
  EXPECT_NE(e.find("model.layers.0.self_attn.v_proj also read(s)"), std::string::npos) << e;
  // Two mappings on one norm.
  const SmoothQuantMapping mlp = DefaultSmoothQuantMappings()[1];
  EXPECT_NE(ErrorOf(Plan({mlp, mlp})).find("already smoothed by mapping 0"), std::string::npos);
  // An invalid pattern.
  EXPECT_NE(ErrorOf(Plan({{{"re:.*(q_proj"}, "re:.*input_layernorm"}})), "OK");
  EXPECT_NE(ErrorOf(Plan(DefaultSmoothQuantMappings(), {"re:(unclosed"})), "OK");
}

}  // namespace
}  // namespace lowbit
