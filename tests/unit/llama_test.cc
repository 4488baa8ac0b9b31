// Llama-family model: config parsing (accepted family members and refused configs), the
// loader's validation, hand-computed forward values (RMSNorm, RoPE at position 1, causal
// attention), and the hooks (called once per site with the right shapes; their edits are used).
// The end-to-end logits are checked against an independent NumPy reference in
// tests/python/llama_ref.py.
#include "calibrator/llama.h"

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <random>

#include "common/file_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace lowbit {
namespace {

using ::testing::HasSubstr;
using json = nlohmann::json;
namespace fs = std::filesystem;

json Llama31Config() {
  return json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 8, "vocab_size": 128256, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "hidden_act": "silu", "attention_bias": false, "mlp_bias": false, "tie_word_embeddings": false,
    "torch_dtype": "bfloat16", "pretraining_tp": 1, "max_position_embeddings": 131072})");
}

TEST(LlamaConfigTest, Llama31) {
  absl::StatusOr<LlamaConfig> c = ParseLlamaConfig(Llama31Config());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->architecture, "LlamaForCausalLM");
  EXPECT_EQ(c->hidden_size, 4096);
  EXPECT_EQ(c->num_kv_heads, 8);
  EXPECT_EQ(c->head_dim, 128);  // hidden / heads
  EXPECT_EQ(c->vocab_size, 128256);
  EXPECT_DOUBLE_EQ(c->rms_norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(c->rope_theta, 500000.0);
  EXPECT_EQ(c->rope_scaling.type, "llama3");
  EXPECT_DOUBLE_EQ(c->rope_scaling.factor, 8.0);
  EXPECT_DOUBLE_EQ(c->rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(c->rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_EQ(c->dtype, DType::kBF16);
  EXPECT_FALSE(c->LinearHasBias("self_attn.q_proj"));
}

TEST(LlamaConfigTest, Llama2DefaultsAndOldTypeSpelling) {
  json j = Llama31Config();
  j.erase("num_key_value_heads");  // Llama 2 7B: MHA
  j.erase("rope_theta");
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  j["torch_dtype"] = "float16";
  absl::StatusOr<LlamaConfig> c = ParseLlamaConfig(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->num_kv_heads, 32);
  EXPECT_DOUBLE_EQ(c->rope_theta, 10000.0);
  EXPECT_EQ(c->rope_scaling.type, "linear");
  EXPECT_DOUBLE_EQ(c->rope_scaling.factor, 2.0);
  EXPECT_EQ(c->dtype, DType::kF16);

  j["rope_scaling"] = nullptr;
  c = ParseLlamaConfig(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rope_scaling.type, "");
  j["rope_scaling"] = {{"rope_type", "default"}};
  c = ParseLlamaConfig(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rope_scaling.type, "");
}

TEST(LlamaConfigTest, Qwen2HasQkvBiasOnly) {
  json j = json::parse(R"({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
    "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
    "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
    "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "rope_scaling": null, "hidden_act": "silu",
    "sliding_window": 32768, "use_sliding_window": false, "max_window_layers": 21,
    "tie_word_embeddings": true, "torch_dtype": "bfloat16"})");
  absl::StatusOr<LlamaConfig> c = ParseLlamaConfig(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->head_dim, 64);
  EXPECT_TRUE(c->tie_word_embeddings);
  EXPECT_EQ(c->sliding_window, 0);
  for (const char* s : {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"}) EXPECT_TRUE(c->LinearHasBias(s));
  for (const char* s : {"self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}) {
    EXPECT_FALSE(c->LinearHasBias(s)) << s;
  }
}

TEST(LlamaConfigTest, MistralSlidingWindow) {
  json j = Llama31Config();
  j["architectures"] = {"MistralForCausalLM"};
  j["model_type"] = "mistral";
  j["rope_scaling"] = nullptr;
  j["head_dim"] = 160;  // Mistral-Nemo: head_dim differs from hidden / heads
  j["sliding_window"] = nullptr;
  absl::StatusOr<LlamaConfig> c = ParseLlamaConfig(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->head_dim, 160);
  EXPECT_EQ(c->sliding_window, 0);
  j["sliding_window"] = 4096;
  c = ParseLlamaConfig(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->sliding_window, 4096);
}

struct BadCase {
  const char* what;
  std::function<void(json&)> edit;
  std::vector<std::string> message;  // substrings the error must contain
};

TEST(LlamaConfigTest, RefusesWithActionableMessages) {
  const BadCase cases[] = {
      {"other model_type", [](json& j) { j["model_type"] = "gpt2"; }, {"model_type", "gpt2"}},
      {"architecture mismatch", [](json& j) { j["architectures"] = {"MixtralForCausalLM"}; },
       {"architectures", "MixtralForCausalLM", "LlamaForCausalLM"}},
      {"rope yarn", [](json& j) { j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}}; },
       {"rope_scaling.rope_type", "yarn"}},
      {"rope types disagree", [](json& j) { j["rope_scaling"]["type"] = "linear"; }, {"rope_scaling", "disagree"}},
      {"llama3 missing field", [](json& j) { j["rope_scaling"].erase("low_freq_factor"); },
       {"rope_scaling.low_freq_factor", "required"}},
      {"gelu", [](json& j) { j["hidden_act"] = "gelu"; }, {"hidden_act", "silu", "gelu"}},
      {"kv heads do not divide", [](json& j) { j["num_key_value_heads"] = 5; }, {"num_key_value_heads", "5", "32"}},
      {"missing hidden_size", [](json& j) { j.erase("hidden_size"); }, {"hidden_size", "missing"}},
      {"odd head_dim", [](json& j) { j["head_dim"] = 127; }, {"head_dim", "even", "127"}},
      {"string size", [](json& j) { j["intermediate_size"] = "14336"; }, {"intermediate_size", "integer"}},
      {"negative eps", [](json& j) { j["rms_norm_eps"] = -1; }, {"rms_norm_eps", "positive"}},
      {"int8 dtype", [](json& j) { j["torch_dtype"] = "int8"; }, {"torch_dtype", "int8"}},
      {"llama sliding window", [](json& j) { j["sliding_window"] = 4096; }, {"sliding_window", "4096"}},
      {"qwen2 sliding window in use",
       [](json& j) {
         j["model_type"] = "qwen2";
         j["architectures"] = {"Qwen2ForCausalLM"};
         j["use_sliding_window"] = true;
       },
       {"use_sliding_window"}},
  };
  for (const BadCase& bc : cases) {
    json j = Llama31Config();
    bc.edit(j);
    absl::StatusOr<LlamaConfig> c = ParseLlamaConfig(j);
    ASSERT_FALSE(c.ok()) << bc.what;
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << bc.what;
    for (const std::string& m : bc.message) {
      EXPECT_THAT(std::string(c.status().message()), HasSubstr(m)) << bc.what;
    }
  }
}

TEST(LlamaTest, SiteOfAndLinearBySuffix) {
  EXPECT_EQ(SiteOf("self_attn.q_proj"), LinearSite::kAttentionInput);
  EXPECT_EQ(SiteOf("self_attn.k_proj"), LinearSite::kAttentionInput);
  EXPECT_EQ(SiteOf("self_attn.v_proj"), LinearSite::kAttentionInput);
  EXPECT_EQ(SiteOf("self_attn.o_proj"), LinearSite::kOProjInput);
  EXPECT_EQ(SiteOf("mlp.gate_proj"), LinearSite::kMlpInput);
  EXPECT_EQ(SiteOf("mlp.up_proj"), LinearSite::kMlpInput);
  EXPECT_EQ(SiteOf("mlp.down_proj"), LinearSite::kDownProjInput);
  DecoderLayerWeights w;
  EXPECT_EQ(w.Linear("self_attn.k_proj"), &w.k_proj);
  EXPECT_EQ(w.Linear("mlp.down_proj"), &w.down_proj);
  EXPECT_EQ(w.Linear("lm_head"), nullptr);
  const int64_t lengths[] = {3, 0, 2};
  SequenceSpans s = SequenceSpans::FromLengths(lengths);
  EXPECT_EQ(s.offsets, (std::vector<int64_t>{0, 3, 3, 5}));
  EXPECT_EQ(s.num_sequences(), 3);
  EXPECT_EQ(s.num_rows(), 5);
}

// ------------------------------------------------------------------------------------------
// Hand-computed forward values on a 2-dimensional model: one head of size 2.
// ------------------------------------------------------------------------------------------
LlamaConfig TinyConfig() {
  LlamaConfig c;
  c.architecture = "LlamaForCausalLM";
  c.model_type = "llama";
  c.hidden_size = 2;
  c.intermediate_size = 1;
  c.num_layers = 1;
  c.num_heads = 1;
  c.num_kv_heads = 1;
  c.head_dim = 2;
  c.vocab_size = 2;
  c.rms_norm_eps = 1e-6;
  c.rope_theta = 10000.0;
  return c;
}

LinearWeights Lin(int64_t out, int64_t in, std::vector<float> w) { return {out, in, std::move(w), {}}; }

DecoderLayerWeights TinyLayer() {
  DecoderLayerWeights w;
  w.input_layernorm = {1.0f, 1.0f};
  w.post_attention_layernorm = {1.0f, 1.0f};
  w.q_proj = Lin(2, 2, {1, 0, 0, 1});
  w.k_proj = Lin(2, 2, {1, 0, 0, 1});
  w.v_proj = Lin(2, 2, {2, 0, 0, 3});
  w.o_proj = Lin(2, 2, {1, 0, 0, 1});
  w.gate_proj = Lin(1, 2, {1, 0});
  w.up_proj = Lin(1, 2, {0, 1});
  w.down_proj = Lin(2, 1, {1, -1});
  return w;
}

// Records what the hooks see.
class Recorder : public LayerHooks {
 public:
  struct Call {
    int site;  // LinearSite, or -1 for OnKeyValue
    int64_t rows, cols;
  };
  void OnLinearInput(LinearSite site, float* x, int64_t rows, int64_t cols) override {
    calls.push_back({static_cast<int>(site), rows, cols});
    inputs[static_cast<int>(site)].assign(x, x + rows * cols);
  }
  void OnKeyValue(float* k, float* v, int64_t rows, int64_t cols) override {
    calls.push_back({-1, rows, cols});
    keys.assign(k, k + rows * cols);
    values.assign(v, v + rows * cols);
  }
  std::vector<Call> calls;
  std::vector<float> inputs[kNumLinearSites], keys, values;
};

TEST(LlamaForwardTest, RmsNormRopeAndSingleTokenAttentionByHand) {
  const LlamaConfig c = TinyConfig();
  const DecoderLayerWeights w = TinyLayer();
  // Two tokens in one sequence: x0 = (3, 4), x1 = (1, 0).
  std::vector<float> hidden = {3, 4, 1, 0};
  Recorder rec;
  const int64_t len[] = {2};
  ASSERT_TRUE(DecoderLayerForward(c, w, CpuCompute(), SequenceSpans::FromLengths(len), hidden.data(), &rec).ok());

  // RMSNorm: x / sqrt(mean(x²) + eps): (3, 4) / sqrt(12.5), (1, 0) / sqrt(0.5).
  const double r0 = 1 / std::sqrt(12.5 + 1e-6), r1 = 1 / std::sqrt(0.5 + 1e-6);
  const std::vector<float>& a = rec.inputs[static_cast<int>(LinearSite::kAttentionInput)];
  ASSERT_EQ(a.size(), 4u);
  EXPECT_NEAR(a[0], 3 * r0, 1e-6);
  EXPECT_NEAR(a[1], 4 * r0, 1e-6);
  EXPECT_NEAR(a[2], 1 * r1, 1e-6);
  EXPECT_NEAR(a[3], 0, 1e-6);

  // k = normed x (identity k_proj). RoPE with head_dim 2: one frequency, 1/theta^0 = 1, so
  // position 0 is unrotated and position 1 rotates (x1, x2) by 1 radian:
  // (x1 cos 1 - x2 sin 1, x2 cos 1 + x1 sin 1).
  ASSERT_EQ(rec.keys.size(), 4u);
  EXPECT_NEAR(rec.keys[0], 3 * r0, 1e-6);
  EXPECT_NEAR(rec.keys[1], 4 * r0, 1e-6);
  EXPECT_NEAR(rec.keys[2], r1 * std::cos(1.0), 1e-6);
  EXPECT_NEAR(rec.keys[3], r1 * std::sin(1.0), 1e-6);
  // v = diag(2, 3) · normed x, not rotated.
  EXPECT_NEAR(rec.values[0], 2 * 3 * r0, 1e-6);
  EXPECT_NEAR(rec.values[1], 3 * 4 * r0, 1e-6);
  EXPECT_NEAR(rec.values[2], 2 * r1, 1e-6);
  EXPECT_NEAR(rec.values[3], 0, 1e-6);

  // Causal attention: token 0 sees only itself, so its output is v0 exactly. Token 1 mixes
  // v0 and v1 with softmax(q1·k0, q1·k1) / sqrt(2), q1 = k1 (same projection and rotation).
  const std::vector<float>& o = rec.inputs[static_cast<int>(LinearSite::kOProjInput)];
  ASSERT_EQ(o.size(), 4u);
  EXPECT_NEAR(o[0], rec.values[0], 1e-6);
  EXPECT_NEAR(o[1], rec.values[1], 1e-6);
  const double q1x = r1 * std::cos(1.0), q1y = r1 * std::sin(1.0);
  const double s0 = (q1x * 3 * r0 + q1y * 4 * r0) / std::sqrt(2.0), s1 = (q1x * q1x + q1y * q1y) / std::sqrt(2.0);
  const double p0 = std::exp(s0) / (std::exp(s0) + std::exp(s1)), p1 = 1 - p0;
  EXPECT_NEAR(o[2], p0 * 6 * r0 + p1 * 2 * r1, 1e-5);
  EXPECT_NEAR(o[3], p0 * 12 * r0 + p1 * 0, 1e-5);

  // Residual + MLP for token 0: h = x0 + v0; m = RMSNorm(h); act = silu(m_0) · m_1;
  // out = h + (act, -act).
  const double h0 = 3 + 6 * r0, h1 = 4 + 12 * r0;
  const double rm = 1 / std::sqrt((h0 * h0 + h1 * h1) / 2 + 1e-6);
  const double m0 = h0 * rm, m1 = h1 * rm;
  const double act = m0 / (1 + std::exp(-m0)) * m1;
  EXPECT_NEAR(rec.inputs[static_cast<int>(LinearSite::kDownProjInput)][0], act, 1e-5);
  EXPECT_NEAR(hidden[0], h0 + act, 1e-5);
  EXPECT_NEAR(hidden[1], h1 - act, 1e-5);
}

TEST(LlamaForwardTest, SequencesDoNotSeeEachOther) {
  // The same token as the second of a two-token sequence and as a sequence of its own: alone
  // it attends only to itself (output v), and its position restarts at 0.
  const LlamaConfig c = TinyConfig();
  const DecoderLayerWeights w = TinyLayer();
  std::vector<float> batch = {3, 4, 1, 0, 1, 0};
  const int64_t lens[] = {2, 1};
  ASSERT_TRUE(DecoderLayerForward(c, w, CpuCompute(), SequenceSpans::FromLengths(lens), batch.data(), nullptr).ok());
  std::vector<float> alone = {1, 0};
  const int64_t one[] = {1};
  ASSERT_TRUE(DecoderLayerForward(c, w, CpuCompute(), SequenceSpans::FromLengths(one), alone.data(), nullptr).ok());
  EXPECT_FLOAT_EQ(batch[4], alone[0]);
  EXPECT_FLOAT_EQ(batch[5], alone[1]);
  EXPECT_GT(std::abs(batch[2] - alone[0]), 1e-3);  // in the first sequence it saw token 0
}

TEST(LlamaForwardTest, RopeLlama3LeavesHighFrequenciesAlone) {
  // head_dim 2 has one frequency, 1 (wavelength 2π). With original_max_position_embeddings 8,
  // low_freq_factor 1 and high_freq_factor 4, 8/4 = 2 <= 2π <= 8/1 = 8: a medium frequency,
  // smooth = (8/2π - 1) / (4 - 1), f = (1 - smooth) · 1/factor + smooth · 1. The rotation angle
  // at position 1 is f.
  LlamaConfig c = TinyConfig();
  c.rope_scaling.type = "llama3";
  c.rope_scaling.factor = 8;
  c.rope_scaling.low_freq_factor = 1;
  c.rope_scaling.high_freq_factor = 4;
  c.rope_scaling.original_max_position_embeddings = 8;
  const DecoderLayerWeights w = TinyLayer();
  std::vector<float> hidden = {3, 4, 1, 0};
  Recorder rec;
  const int64_t len[] = {2};
  ASSERT_TRUE(DecoderLayerForward(c, w, CpuCompute(), SequenceSpans::FromLengths(len), hidden.data(), &rec).ok());
  const double smooth = (8 / (2 * M_PI) - 1) / 3.0;
  const double f = (1 - smooth) / 8 + smooth;
  const double r1 = 1 / std::sqrt(0.5 + 1e-6);
  EXPECT_NEAR(rec.keys[2], r1 * std::cos(f), 1e-6);
  EXPECT_NEAR(rec.keys[3], r1 * std::sin(f), 1e-6);
  // original 1000: wavelength 2π < 1000/4, a high frequency: unchanged.
  c.rope_scaling.original_max_position_embeddings = 1000;
  hidden = {3, 4, 1, 0};
  ASSERT_TRUE(DecoderLayerForward(c, w, CpuCompute(), SequenceSpans::FromLengths(len), hidden.data(), &rec).ok());
  EXPECT_NEAR(rec.keys[2], r1 * std::cos(1.0), 1e-6);
  // original 2: wavelength 2π > 2/1, a low frequency: divided by the factor.
  c.rope_scaling.original_max_position_embeddings = 2;
  hidden = {3, 4, 1, 0};
  ASSERT_TRUE(DecoderLayerForward(c, w, CpuCompute(), SequenceSpans::FromLengths(len), hidden.data(), &rec).ok());
  EXPECT_NEAR(rec.keys[2], r1 * std::cos(1.0 / 8), 1e-6);
}

TEST(LlamaForwardTest, LmHeadRmsNorm) {
  LlamaConfig c = TinyConfig();
  const std::vector<float> norm = {1, 2}, hidden = {3, 4};
  LinearWeights head = Lin(2, 2, {1, 0, 1, 1});
  std::vector<float> logits = LmHeadForward(c, norm, head, CpuCompute(), hidden, 1);
  const double r = 1 / std::sqrt(12.5 + 1e-6);
  ASSERT_EQ(logits.size(), 2u);
  EXPECT_NEAR(logits[0], 3 * r, 1e-6);
  EXPECT_NEAR(logits[1], 3 * r + 8 * r, 1e-6);
}

TEST(LlamaForwardTest, RefusesSequencesLongerThanSlidingWindow) {
  LlamaConfig c = TinyConfig();
  c.sliding_window = 2;
  const DecoderLayerWeights w = TinyLayer();
  std::vector<float> hidden(6, 1.0f);
  const int64_t three[] = {3};
  absl::Status s = DecoderLayerForward(c, w, CpuCompute(), SequenceSpans::FromLengths(three), hidden.data(), nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("sliding_window"));
  const int64_t twos[] = {2, 1};
  EXPECT_TRUE(DecoderLayerForward(c, w, CpuCompute(), SequenceSpans::FromLengths(twos), hidden.data(), nullptr).ok());
}

TEST(LlamaForwardTest, RefusesMisshapenWeights) {
  const LlamaConfig c = TinyConfig();
  DecoderLayerWeights w = TinyLayer();
  w.k_proj = Lin(4, 2, std::vector<float>(8, 0.0f));
  std::vector<float> hidden(2, 1.0f);
  const int64_t one[] = {1};
  absl::Status s = DecoderLayerForward(c, w, CpuCompute(), SequenceSpans::FromLengths(one), hidden.data(), nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("self_attn.k_proj"));
}

// ------------------------------------------------------------------------------------------
// Hooks on a random GQA layer.
// ------------------------------------------------------------------------------------------
LlamaConfig GqaConfig() {
  LlamaConfig c = TinyConfig();
  c.hidden_size = 16;
  c.intermediate_size = 24;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 6;  // q: 24 wide, differs from hidden
  return c;
}

DecoderLayerWeights RandomLayer(const LlamaConfig& c, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> n(0.0f, 0.3f);
  auto lin = [&](int64_t out, int64_t in) {
    LinearWeights l{out, in, std::vector<float>(out * in), {}};
    for (float& x : l.weight) x = n(rng);
    return l;
  };
  DecoderLayerWeights w;
  const int64_t q = c.num_heads * c.head_dim, kv = c.num_kv_heads * c.head_dim;
  w.input_layernorm.assign(c.hidden_size, 1.0f);
  w.post_attention_layernorm.assign(c.hidden_size, 1.0f);
  for (float& x : w.input_layernorm) x += n(rng);
  for (float& x : w.post_attention_layernorm) x += n(rng);
  w.q_proj = lin(q, c.hidden_size);
  w.k_proj = lin(kv, c.hidden_size);
  w.v_proj = lin(kv, c.hidden_size);
  w.o_proj = lin(c.hidden_size, q);
  w.gate_proj = lin(c.intermediate_size, c.hidden_size);
  w.up_proj = lin(c.intermediate_size, c.hidden_size);
  w.down_proj = lin(c.hidden_size, c.intermediate_size);
  return w;
}

std::vector<float> RandomHidden(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

TEST(LlamaHooksTest, CalledOncePerSiteWithShapes) {
  const LlamaConfig c = GqaConfig();
  const DecoderLayerWeights w = RandomLayer(c, 1);
  const int64_t lens[] = {5, 3};
  std::vector<float> hidden = RandomHidden(8 * c.hidden_size, 2);
  Recorder rec;
  ASSERT_TRUE(DecoderLayerForward(c, w, CpuCompute(), SequenceSpans::FromLengths(lens), hidden.data(), &rec).ok());
  ASSERT_EQ(rec.calls.size(), 5u);
  const int kv = -1;
  const Recorder::Call want[] = {{static_cast<int>(LinearSite::kAttentionInput), 8, 16},
                                 {kv, 8, 12},
                                 {static_cast<int>(LinearSite::kOProjInput), 8, 24},
                                 {static_cast<int>(LinearSite::kMlpInput), 8, 16},
                                 {static_cast<int>(LinearSite::kDownProjInput), 8, 24}};
  for (size_t i = 0; i < 5; ++i) {
    EXPECT_EQ(rec.calls[i].site, want[i].site) << i;
    EXPECT_EQ(rec.calls[i].rows, want[i].rows) << i;
    EXPECT_EQ(rec.calls[i].cols, want[i].cols) << i;
  }
}

// Zeroes the data at chosen sites (and optionally K or V).
class Zeroer : public LayerHooks {
 public:
  std::vector<LinearSite> sites;
  bool zero_k = false, zero_v = false;
  void OnLinearInput(LinearSite site, float* x, int64_t rows, int64_t cols) override {
    if (std::find(sites.begin(), sites.end(), site) != sites.end()) std::fill(x, x + rows * cols, 0.0f);
  }
  void OnKeyValue(float* k, float* v, int64_t rows, int64_t cols) override {
    if (zero_k) std::fill(k, k + rows * cols, 0.0f);
    if (zero_v) std::fill(v, v + rows * cols, 0.0f);
  }
};

TEST(LlamaHooksTest, EditsReachTheGemms) {
  // Without biases, a zero input at a branch's Linears zeroes that branch, and with both
  // branches zeroed the layer is the identity (only the residuals remain).
  const LlamaConfig c = GqaConfig();
  const DecoderLayerWeights w = RandomLayer(c, 3);
  const int64_t lens[] = {6, 2};
  const std::vector<float> input = RandomHidden(8 * c.hidden_size, 4);
  struct Case {
    const char* what;
    std::vector<LinearSite> sites;
    bool zero_v;
  };
  const Case cases[] = {
      {"attention input + mlp input", {LinearSite::kAttentionInput, LinearSite::kMlpInput}, false},
      {"o_proj input + down_proj input", {LinearSite::kOProjInput, LinearSite::kDownProjInput}, false},
      {"values + mlp input", {LinearSite::kMlpInput}, true},
  };
  for (const Case& cs : cases) {
    Zeroer z;
    z.sites = cs.sites;
    z.zero_v = cs.zero_v;
    std::vector<float> hidden = input;
    ASSERT_TRUE(DecoderLayerForward(c, w, CpuCompute(), SequenceSpans::FromLengths(lens), hidden.data(), &z).ok());
    EXPECT_EQ(hidden, input) << cs.what;
  }
  std::vector<float> hidden = input;
  ASSERT_TRUE(DecoderLayerForward(c, w, CpuCompute(), SequenceSpans::FromLengths(lens), hidden.data(), nullptr).ok());
  EXPECT_NE(hidden, input);
}

TEST(LlamaHooksTest, ZeroKeysGiveUniformAttention) {
  // With K = 0 every score is 0, so query i averages v_0..v_i of its sequence.
  const LlamaConfig c = GqaConfig();
  const DecoderLayerWeights w = RandomLayer(c, 5);
  const int64_t lens[] = {4, 3};
  std::vector<float> hidden = RandomHidden(7 * c.hidden_size, 6);
  struct Both : Zeroer {
    Recorder rec;
    void OnLinearInput(LinearSite site, float* x, int64_t rows, int64_t cols) override {
      rec.OnLinearInput(site, x, rows, cols);
    }
    void OnKeyValue(float* k, float* v, int64_t rows, int64_t cols) override {
      Zeroer::OnKeyValue(k, v, rows, cols);
      rec.OnKeyValue(k, v, rows, cols);
    }
  } hooks;
  hooks.zero_k = true;
  ASSERT_TRUE(DecoderLayerForward(c, w, CpuCompute(), SequenceSpans::FromLengths(lens), hidden.data(), &hooks).ok());
  const std::vector<float>& v = hooks.rec.values;
  const std::vector<float>& o = hooks.rec.inputs[static_cast<int>(LinearSite::kOProjInput)];
  const int64_t d = c.head_dim, kvdim = c.num_kv_heads * d, qdim = c.num_heads * d;
  const int64_t starts[] = {0, 0, 0, 0, 4, 4, 4};
  for (int64_t row = 0; row < 7; ++row) {
    for (int64_t head = 0; head < c.num_heads; ++head) {
      const int64_t g = head / (c.num_heads / c.num_kv_heads);
      for (int64_t i = 0; i < d; ++i) {
        double mean = 0;
        for (int64_t j = starts[row]; j <= row; ++j) mean += v[j * kvdim + g * d + i];
        mean /= static_cast<double>(row - starts[row] + 1);
        EXPECT_NEAR(o[row * qdim + head * d + i], mean, 1e-5) << row << " " << head << " " << i;
      }
    }
  }
}

// ------------------------------------------------------------------------------------------
// LlamaModel::Open on small hand-written directories.
// ------------------------------------------------------------------------------------------
class LlamaModelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = (fs::temp_directory_path() / ("lowbit_llama_" + std::to_string(::getpid()) + "_" +
                                         ::testing::UnitTest::GetInstance()->current_test_info()->name()))
               .string();
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  json Config() const {
    return {{"architectures", {"LlamaForCausalLM"}}, {"model_type", "llama"}, {"hidden_size", 4},
            {"intermediate_size", 6}, {"num_hidden_layers", 2}, {"num_attention_heads", 2},
            {"num_key_value_heads", 1}, {"vocab_size", 5}, {"rms_norm_eps", 1e-5},
            {"tie_word_embeddings", false}, {"torch_dtype", "bfloat16"}};
  }
  // Every tensor the config needs, value = a running counter so rows are distinguishable.
  std::vector<NamedTensor> Tensors(DType dtype, bool with_lm_head = true) const {
    std::vector<NamedTensor> t;
    float counter = 0;
    auto add = [&](const std::string& name, Shape shape) {
      int64_t n = 1;
      for (int64_t s : shape) n *= s;
      std::vector<float> v(n);
      for (float& x : v) x = (counter += 0.25f);
      t.push_back({name, Tensor::FromFloats(v, shape, dtype)});
    };
    add("model.embed_tokens.weight", {5, 4});
    for (int l = 0; l < 2; ++l) {
      const std::string p = "model.layers." + std::to_string(l) + ".";
      add(p + "input_layernorm.weight", {4});
      add(p + "post_attention_layernorm.weight", {4});
      add(p + "self_attn.q_proj.weight", {4, 4});
      add(p + "self_attn.k_proj.weight", {2, 4});
      add(p + "self_attn.v_proj.weight", {2, 4});
      add(p + "self_attn.o_proj.weight", {4, 4});
      add(p + "mlp.gate_proj.weight", {6, 4});
      add(p + "mlp.up_proj.weight", {6, 4});
      add(p + "mlp.down_proj.weight", {4, 6});
    }
    add("model.norm.weight", {4});
    if (with_lm_head) add("lm_head.weight", {5, 4});
    return t;
  }
  void Write(const json& config, std::vector<NamedTensor> tensors) {
    fs::create_directories(dir_);
    ASSERT_TRUE(AtomicWriteFile(dir_ + "/config.json", config.dump()).ok());
    ASSERT_TRUE(WriteSafetensorsModel(dir_, std::move(tensors), 1 << 30).ok());
  }
  std::string dir_;
};

TEST_F(LlamaModelTest, OpensLoadsEmbeds) {
  Write(Config(), Tensors(DType::kBF16));
  absl::StatusOr<std::unique_ptr<LlamaModel>> m = LlamaModel::Open(dir_);
  ASSERT_TRUE(m.ok()) << m.status();
  absl::StatusOr<DecoderLayerWeights> w = (*m)->LoadLayer(1);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->k_proj.out, 2);
  EXPECT_EQ(w->k_proj.in, 4);
  EXPECT_EQ(w->down_proj.weight.size(), 24u);
  EXPECT_TRUE(w->q_proj.bias.empty());
  EXPECT_EQ((*m)->LoadLayer(2).status().code(), absl::StatusCode::kOutOfRange);
  // Embedding row 2 holds 0.25 · (9, 10, 11, 12) (values are exact in bf16).
  const int32_t ids[] = {2, 0};
  absl::StatusOr<std::vector<float>> e = (*m)->Embed(ids);
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(*e, (std::vector<float>{2.25f, 2.5f, 2.75f, 3.0f, 0.25f, 0.5f, 0.75f, 1.0f}));
  const int32_t bad[] = {1, 5};
  absl::Status s = (*m)->Embed(bad).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("vocabulary"));
  absl::StatusOr<LinearWeights> head = (*m)->LoadLmHead();
  ASSERT_TRUE(head.ok());
  EXPECT_EQ(head->out, 5);
  EXPECT_NE(head->weight[0], 0.25f);  // lm_head, not the embeddings
}

TEST_F(LlamaModelTest, TiedEmbeddingsUseTheEmbeddingMatrix) {
  json c = Config();
  c["tie_word_embeddings"] = true;
  Write(c, Tensors(DType::kF32, /*with_lm_head=*/false));
  absl::StatusOr<std::unique_ptr<LlamaModel>> m = LlamaModel::Open(dir_);
  ASSERT_TRUE(m.ok()) << m.status();
  absl::StatusOr<LinearWeights> head = (*m)->LoadLmHead();
  ASSERT_TRUE(head.ok());
  EXPECT_EQ(head->weight.size(), 20u);
  EXPECT_EQ(head->weight[0], 0.25f);
  EXPECT_EQ(head->weight[19], 5.0f);
}

TEST_F(LlamaModelTest, RefusesMissingMisshapenAndNonFloatTensors) {
  {
    std::vector<NamedTensor> t = Tensors(DType::kBF16, /*with_lm_head=*/false);
    Write(Config(), std::move(t));
    absl::Status s = LlamaModel::Open(dir_).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(s.message()), HasSubstr("lm_head.weight"));
    EXPECT_THAT(std::string(s.message()), HasSubstr("missing"));
  }
  {
    std::vector<NamedTensor> t = Tensors(DType::kBF16);
    for (NamedTensor& x : t) {
      if (x.name == "model.layers.1.self_attn.k_proj.weight") x.tensor = Tensor::FromFloats(std::vector<float>(16), {4, 4}, DType::kBF16);
    }
    fs::remove_all(dir_);
    Write(Config(), std::move(t));
    absl::Status s = LlamaModel::Open(dir_).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(s.message()), HasSubstr("model.layers.1.self_attn.k_proj.weight"));
    EXPECT_THAT(std::string(s.message()), HasSubstr("num_key_value_heads"));
  }
  {
    std::vector<NamedTensor> t = Tensors(DType::kBF16);
    for (NamedTensor& x : t) {
      if (x.name == "model.norm.weight") x.tensor = Tensor::Zeros(DType::kI32, {4});
    }
    fs::remove_all(dir_);
    Write(Config(), std::move(t));
    absl::Status s = LlamaModel::Open(dir_).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(s.message()), HasSubstr("model.norm.weight"));
    EXPECT_THAT(std::string(s.message()), HasSubstr("I32"));
  }
  {
    json c = Config();
    c["model_type"] = "qwen2";
    c["architectures"] = {"Qwen2ForCausalLM"};
    fs::remove_all(dir_);
    Write(c, Tensors(DType::kBF16));
    absl::Status s = LlamaModel::Open(dir_).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(s.message()), HasSubstr("model.layers.0.self_attn.q_proj.bias"));
  }
  {
    json c = Config();
    c["model_type"] = "falcon";
    fs::remove_all(dir_);
    Write(c, Tensors(DType::kBF16));
    absl::Status s = LlamaModel::Open(dir_).status();
    EXPECT_THAT(std::string(s.message()), HasSubstr("config.json"));
    EXPECT_THAT(std::string(s.message()), HasSubstr("falcon"));
  }
}

}  // namespace
}  // namespace lowbit
