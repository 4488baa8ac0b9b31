// A deterministic synthetic Llama-family model written as a normal Hugging Face directory
// (config.json, generation_config.json, model.safetensors or shards). Tests and the demo use
// it so nothing is downloaded at run time.
//
// Outliers: real LLMs have a few hidden channels whose activations are tens of times larger
// than the rest (the pattern SmoothQuant exists for). We reproduce it by scaling those channels
// of every RMSNorm weight (input_layernorm, post_attention_layernorm) and of the embeddings, so
// the inputs of q/k/v and gate/up carry the outliers.
#ifndef LOWBIT_TOOLS_GEN_MODEL_SYNTHETIC_LLAMA_H_
#define LOWBIT_TOOLS_GEN_MODEL_SYNTHETIC_LLAMA_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "common/dtype.h"
#include "nlohmann/json.hpp"

namespace lowbit {

struct SyntheticLlamaOptions {
  int64_t hidden = 256;
  int64_t intermediate = 512;
  int64_t layers = 2;
  int64_t heads = 4;
  int64_t kv_heads = 2;
  int64_t vocab = 512;
  DType dtype = DType::kBF16;
  uint64_t seed = 0;
  int outlier_channels = 4;      // hidden channels with large activations
  float outlier_scale = 30.0f;   // how much larger
  bool tie_embeddings = false;
  double rope_theta = 500000.0;
  uint64_t max_shard_bytes = 2ull << 30;
  // Family member: "llama" (LlamaForCausalLM), "mistral" (MistralForCausalLM, sliding_window
  // null), "qwen2" (Qwen2ForCausalLM, q/k/v biases, use_sliding_window false).
  std::string arch = "llama";
  int64_t head_dim = 0;  // 0: hidden / heads
  // rope_scaling block: "" (null) or "llama3" (factor, low_freq_factor 1, high_freq_factor 4,
  // original_max_position_embeddings) or "linear" (factor).
  std::string rope_scaling;
  double rope_factor = 8.0;
  int64_t rope_original_max_position = 8192;

  int64_t HeadDim() const { return head_dim > 0 ? head_dim : hidden / heads; }
};

// Checks sizes (positive; hidden divisible by heads unless head_dim is given; heads divisible
// by kv_heads; head_dim even), dtype (F32, F16 or BF16), arch and rope_scaling.
absl::Status ValidateOptions(const SyntheticLlamaOptions& options);
// The hidden channels that carry outliers (deterministic in the seed).
std::vector<int64_t> OutlierChannels(const SyntheticLlamaOptions& options);
nlohmann::json SyntheticLlamaConfig(const SyntheticLlamaOptions& options);
// Writes the model into `dir` (created if missing).
absl::Status WriteSyntheticLlama(const std::string& dir, const SyntheticLlamaOptions& options);

}  // namespace lowbit

#endif  // LOWBIT_TOOLS_GEN_MODEL_SYNTHETIC_LLAMA_H_
