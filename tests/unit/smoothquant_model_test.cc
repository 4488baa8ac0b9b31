// SmoothQuant on a whole model: folding the smoothing into the norms and Linears must leave
// the float model's logits unchanged (issue acceptance: <= 1e-4 relative), while really
// changing the weights. The model is lowbit-gen-model's default (bf16, outlier channels); the
// statistics come from the forward pass's own hooks, as in the pipeline.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "calibrator/compute.h"
#include "calibrator/llama.h"
#include "calibrator/smoothquant.h"
#include "common/recipe.h"
#include "gtest/gtest.h"
#include "tools/gen_model/synthetic_llama.h"
#include "tools/gen_tokens/synthetic_tokens.h"

namespace lowbit {
namespace {

namespace fs = std::filesystem;

class RangeHooks : public LayerHooks {
 public:
  ChannelRange attention, mlp;
  void OnLinearInput(LinearSite site, float* x, int64_t rows, int64_t cols) override {
    if (site == LinearSite::kAttentionInput) ASSERT_TRUE(attention.Update(x, rows, cols).ok());
    if (site == LinearSite::kMlpInput) ASSERT_TRUE(mlp.Update(x, rows, cols).ok());
  }
};

TEST(SmoothQuantModelTest, SmoothedModelHasTheSameLogits) {
  const fs::path dir = fs::temp_directory_path() / ("lowbit_sq_model_" + std::to_string(::getpid()));
  SyntheticLlamaOptions options;  // default: 2 layers, bf16, 4 outlier channels x30
  ASSERT_TRUE(WriteSyntheticLlama(dir.string(), options).ok());
  absl::StatusOr<std::unique_ptr<LlamaModel>> model = LlamaModel::Open(dir.string());
  ASSERT_TRUE(model.ok()) << model.status();
  const LlamaConfig& config = (*model)->config();
  Compute& compute = CpuCompute();

  SyntheticTokenOptions token_options;
  token_options.vocab = options.vocab;
  token_options.samples = 6;
  token_options.min_len = 12;
  token_options.max_len = 40;
  std::vector<int32_t> tokens;
  std::vector<int64_t> lengths;
  for (const auto& s : SyntheticTokens(token_options)) {
    tokens.insert(tokens.end(), s.begin(), s.end());
    lengths.push_back(static_cast<int64_t>(s.size()));
  }
  const SequenceSpans spans = SequenceSpans::FromLengths(lengths);
  const int64_t rows = spans.num_rows();

  SmoothQuantPlan plan;
  plan.smoothing_strength = 0.8;
  std::vector<float> original = *(*model)->Embed(tokens), smoothed = original;
  double max_scale_ratio = 0.0;
  for (int64_t layer = 0; layer < config.num_layers; ++layer) {
    DecoderLayerWeights w = *(*model)->LoadLayer(layer);
    ASSERT_TRUE(DecoderLayerForward(config, w, compute, spans, original.data(), nullptr).ok());

    RangeHooks hooks;
    std::vector<float> probe = smoothed;
    ASSERT_TRUE(DecoderLayerForward(config, w, compute, spans, probe.data(), &hooks).ok());
    absl::StatusOr<std::vector<LayerSmoothMapping>> mappings =
        ResolveLayerSmoothMappings(plan, "model.layers." + std::to_string(layer) + ".");
    ASSERT_TRUE(mappings.ok()) << mappings.status();
    ASSERT_EQ(mappings->size(), 2u);
    const std::vector<float> q_before = w.q_proj.weight;
    for (const LayerSmoothMapping& m : *mappings) {
      const ChannelRange& range = m.site == LinearSite::kAttentionInput ? hooks.attention : hooks.mlp;
      absl::StatusOr<std::vector<float>> s = SmoothLayer(m, range, plan.smoothing_strength, plan.algorithm, w);
      ASSERT_TRUE(s.ok()) << s.status();
      auto [lo, hi] = std::minmax_element(s->begin(), s->end());
      max_scale_ratio = std::max(max_scale_ratio, static_cast<double>(*hi / *lo));
    }
    EXPECT_NE(w.q_proj.weight, q_before) << "smoothing did not touch q_proj";
    ASSERT_TRUE(DecoderLayerForward(config, w, compute, spans, smoothed.data(), nullptr).ok());
  }
  // The outlier channels make the smoothing far from uniform.
  EXPECT_GT(max_scale_ratio, 5.0);

  const std::vector<float> norm = *(*model)->LoadFinalNorm();
  const LinearWeights head = *(*model)->LoadLmHead();
  const std::vector<float> a = LmHeadForward(config, norm, head, compute, original, rows);
  const std::vector<float> b = LmHeadForward(config, norm, head, compute, smoothed, rows);
  double diff2 = 0, ref2 = 0, max_diff = 0, max_ref = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    diff2 += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    ref2 += double(a[i]) * a[i];
    max_diff = std::max(max_diff, std::fabs(double(a[i]) - b[i]));
    max_ref = std::max(max_ref, std::fabs(double(a[i])));
  }
  EXPECT_LE(std::sqrt(diff2 / ref2), 1e-4);
  EXPECT_LE(max_diff / max_ref, 1e-4);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace lowbit
