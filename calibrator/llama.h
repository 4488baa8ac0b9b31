// Llama-family models (Llama 2 / 3 / 3.1, Mistral, Qwen2) for calibration: config parsing,
// memory-mapped weights read one decoder layer at a time into float32, and the CPU forward
// pass (RMSNorm, RoPE incl. llama3 rope_scaling, causal GQA attention, SwiGLU) with hooks at
// the points calibration observes or rewrites: every Linear's input, and K/V after RoPE.
//
// Activations of a batch of sequences live in one row-major [tokens, hidden] float buffer; the
// sequences are contiguous runs of rows described by `SequenceSpans`. Linears run over all rows
// at once (one GEMM); attention runs per sequence (causal, no cross-sequence attention).
#ifndef LOWBIT_CALIBRATOR_LLAMA_H_
#define LOWBIT_CALIBRATOR_LLAMA_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "calibrator/compute.h"
#include "common/dtype.h"
#include "common/safetensors.h"
#include "nlohmann/json.hpp"

namespace lowbit {

struct RopeScaling {
  std::string type;  // "" (none), "llama3", "linear"
  double factor = 1.0;
  double low_freq_factor = 1.0;            // llama3
  double high_freq_factor = 4.0;           // llama3
  int64_t original_max_position_embeddings = 8192;  // llama3
};

struct LlamaConfig {
  std::string architecture;  // "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"
  std::string model_type;    // "llama", "mistral", "qwen2"
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;      // config "head_dim" or hidden_size / num_heads
  int64_t vocab_size = 0;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool attention_bias = false;  // q/k/v (and o for Llama's attention_bias) carry biases; Qwen2: q/k/v
  bool tie_word_embeddings = false;
  DType dtype = DType::kBF16;   // torch_dtype
  bool mlp_bias = false;        // Llama's mlp_bias: gate/up/down carry biases
  // Mistral's sliding_window (0 = none). Attention is computed without a window, so
  // DecoderLayerForward refuses any sequence longer than this instead of windowing it.
  int64_t sliding_window = 0;

  // Whether the Linear with this module suffix ("self_attn.q_proj") has a bias tensor.
  bool LinearHasBias(std::string_view linear_suffix) const;
};

// Parses a Hugging Face config.json. Anything outside the supported family (another
// architecture, sliding-window attention actually in use, an unsupported rope_scaling type,
// hidden_act other than silu, ...) is InvalidArgument naming the field and its value.
// Supported: model_type llama / mistral / qwen2 with the matching *ForCausalLM architecture;
// rope_scaling null, "default", "linear" or "llama3" (key "rope_type" or the older "type");
// Qwen2 only with use_sliding_window false; Mistral with sliding_window null or a number
// (sequences longer than it are refused at forward time, see LlamaConfig::sliding_window).
absl::StatusOr<LlamaConfig> ParseLlamaConfig(const nlohmann::json& config);

// One Linear in float32: weight [out, in], bias empty or [out].
struct LinearWeights {
  int64_t out = 0;
  int64_t in = 0;
  std::vector<float> weight;
  std::vector<float> bias;
};

// The Linears of a decoder layer by their module suffix, in this order.
inline constexpr const char* kLayerLinears[] = {
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};

struct DecoderLayerWeights {
  std::vector<float> input_layernorm;           // [hidden]
  std::vector<float> post_attention_layernorm;  // [hidden]
  LinearWeights q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj;

  // By suffix from kLayerLinears ("self_attn.q_proj"); nullptr for anything else.
  LinearWeights* Linear(std::string_view suffix);
  const LinearWeights* Linear(std::string_view suffix) const;
};

// Where a hook sees a Linear input. Linears that share an input share a site: q/k/v read
// kAttentionInput (input_layernorm's output), gate/up read kMlpInput
// (post_attention_layernorm's output), o_proj reads kOProjInput (attention output),
// down_proj reads kDownProjInput (silu(gate) * up).
enum class LinearSite { kAttentionInput, kOProjInput, kMlpInput, kDownProjInput };
inline constexpr int kNumLinearSites = 4;
// "self_attn.k_proj" (or a full module name ending in it) -> kAttentionInput. Anything that is
// not one of kLayerLinears is a programming error: it prints the name and aborts.
LinearSite SiteOf(std::string_view linear_suffix);

// Hooks into one decoder layer's forward. Both are called once per layer forward with all rows
// of the batch, and may rewrite the data in place (evaluation fake-quantizes activations and
// the KV cache this way); calibration only reads.
// The pointers are the forward's own per-thread scratch buffers: valid only during the call,
// and a hook must not run DecoderLayerForward on the same thread.
class LayerHooks {
 public:
  virtual ~LayerHooks() = default;
  // x: [rows, cols] — the input of the Linears at `site`, just before they run.
  virtual void OnLinearInput(LinearSite site, float* x, int64_t rows, int64_t cols) {}
  // k, v: [rows, num_kv_heads * head_dim] — keys after RoPE and values, as the KV cache
  // would store them.
  virtual void OnKeyValue(float* k, float* v, int64_t rows, int64_t cols) {}
};

// Row ranges of the sequences in a batch: sequence i is rows [offsets[i], offsets[i+1]).
struct SequenceSpans {
  std::vector<int64_t> offsets;  // size = sequences + 1, offsets[0] = 0, non-decreasing
  int64_t num_sequences() const { return static_cast<int64_t>(offsets.size()) - 1; }
  int64_t num_rows() const { return offsets.empty() ? 0 : offsets.back(); }
  static SequenceSpans FromLengths(std::span<const int64_t> lengths);
};

// A model directory opened for calibration: config + memory-mapped weights. Nothing is
// converted to float until asked for, one layer at a time.
class LlamaModel {
 public:
  // Reads config.json and opens the safetensors (sharded or not). Checks that every tensor a
  // layer needs exists with the shape the config implies (InvalidArgument naming the tensor
  // otherwise) and that the dtype is F32 / F16 / BF16.
  static absl::StatusOr<std::unique_ptr<LlamaModel>> Open(const std::string& dir);

  const std::string& dir() const { return dir_; }
  const LlamaConfig& config() const { return config_; }
  const SafetensorsModel& tensors() const { return *tensors_; }

  absl::StatusOr<DecoderLayerWeights> LoadLayer(int64_t layer) const;
  // Embedding rows for `tokens` -> [tokens.size(), hidden]. InvalidArgument for an id outside
  // [0, vocab_size).
  absl::StatusOr<std::vector<float>> Embed(std::span<const int32_t> tokens) const;
  absl::StatusOr<std::vector<float>> LoadFinalNorm() const;  // model.norm.weight [hidden]
  // lm_head.weight, or the embedding matrix when tie_word_embeddings. [vocab, hidden]
  absl::StatusOr<LinearWeights> LoadLmHead() const;

 private:
  std::string dir_;
  LlamaConfig config_;
  std::unique_ptr<SafetensorsModel> tensors_;
};

// Runs decoder layer `layer_index` in place on hidden [spans.num_rows(), hidden]: positions
// restart at 0 for each sequence. `hooks` may be null.
// InvalidArgument when the weights do not have the config's shapes, the spans are malformed,
// or a sequence is longer than config.sliding_window (when set). Intermediate activations
// live in per-thread scratch buffers kept between calls (they grow to the largest batch seen
// and are freed when the thread exits). RoPE angles are computed in double (Hugging Face
// computes them in float32; the difference is about angle · 2^-24).
absl::Status DecoderLayerForward(const LlamaConfig& config, const DecoderLayerWeights& weights,
                                 Compute& compute, const SequenceSpans& spans, float* hidden,
                                 LayerHooks* hooks);

// RMSNorm(hidden) * final_norm: the LM head's input, [rows, hidden].
std::vector<float> ApplyFinalNorm(const LlamaConfig& config, std::span<const float> final_norm,
                                  std::span<const float> hidden, int64_t rows);

// logits [rows, vocab] = lm_head(RMSNorm(hidden) * final_norm).
std::vector<float> LmHeadForward(const LlamaConfig& config, std::span<const float> final_norm,
                                 const LinearWeights& lm_head, Compute& compute,
                                 std::span<const float> hidden, int64_t rows);

}  // namespace lowbit

#endif  // LOWBIT_CALIBRATOR_LLAMA_H_
