// An llm-compressor recipe (YAML, or JSON) read into one typed plan Lowbit can run.
// Grammar and defaults: shared/reference/llm-compressor-algorithms.md §7 (container, keys),
// §1.1 and §1.6 (GPTQ), §3 (SmoothQuant), §6 (RTN, presets).
//
//   quant_stage:                      # any number of keys ending in `_stage`
//     quant_modifiers:                # keys ending in `_modifiers`
//       SmoothQuantModifier: {smoothing_strength: 0.8}
//       GPTQModifier: {targets: Linear, scheme: W8A8, ignore: [lm_head]}
//
// Lowbit runs at most one SmoothQuantModifier followed by at most one quantization modifier
// (GPTQModifier or QuantizationModifier); other recipes are refused, not guessed at.
// Like llm-compressor's pydantic models, unknown keys are errors; the removed keys
// sequential_update, sequential_targets, run_type and update_size are dropped with a warning.
// Every error is InvalidArgument and reads "<source>:<line>: <Modifier.key...>: <what>".
#ifndef LOWBIT_COMMON_RECIPE_H_
#define LOWBIT_COMMON_RECIPE_H_

#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/quant_args.h"

namespace lowbit {

// SmoothQuant: one mapping per smoothed activation. The balance layers are the Linears that
// read the smooth layer's output (their columns absorb the scale); targets as in
// module_match.h. YAML form: [[balance, ...], smooth] (balance list first).
struct SmoothQuantMapping {
  std::vector<std::string> balance_layers;
  std::string smooth_layer;
  bool operator==(const SmoothQuantMapping&) const = default;
};

// llm-compressor's DEFAULT_SMOOTHQUANT_MAPPINGS (Llama, Mistral, Qwen2/3, Gemma, ...):
// input_layernorm -> q/k/v_proj and post_attention_layernorm -> gate/up_proj.
const std::vector<SmoothQuantMapping>& DefaultSmoothQuantMappings();

enum class SmoothingAlgorithm { kSmoothQuant, kLogEqualization };

struct SmoothQuantPlan {
  double smoothing_strength = 0.5;  // alpha, in [0, 1]
  std::vector<SmoothQuantMapping> mappings = DefaultSmoothQuantMappings();
  bool default_mappings = true;  // false when the recipe listed its own
  std::vector<std::string> ignore;
  SmoothingAlgorithm algorithm = SmoothingAlgorithm::kSmoothQuant;
  std::optional<int> num_calibration_steps;  // null = all samples
  bool operator==(const SmoothQuantPlan&) const = default;
};

enum class QuantAlgorithm { kRtn, kGptq };              // QuantizationModifier, GPTQModifier
std::string_view QuantAlgorithmName(QuantAlgorithm a);  // "RTN", "GPTQ"

// Modifier-level observer names (weight_observer / input_observer / output_observer, or the
// `observer: {weights, input, output}` mapping). Already applied to config_groups.
struct ObserverOverrides {
  std::optional<std::string> weights, input, output;
  bool operator==(const ObserverOverrides&) const = default;
};

struct QuantizationPlan {
  QuantAlgorithm algorithm = QuantAlgorithm::kRtn;
  // Fully resolved, as compressed-tensors would hold them after the modifier resolved its
  // config: presets expanded (group_0, group_1, ...), args normalized, formats inferred,
  // observer overrides and (GPTQ) the modifier-level actorder applied. May be empty for a
  // QuantizationModifier that only sets kv_cache_scheme.
  std::map<std::string, QuantScheme> config_groups;
  std::vector<std::string> ignore;
  // FP8 (8-bit float), tensor strategy, symmetric, static: what vLLM's KV cache accepts.
  std::optional<QuantArgs> kv_cache_scheme;

  // GPTQ only (defaults as llm-compressor's GPTQModifier).
  int block_size = 128;
  double dampening_frac = 0.01;
  // Modifier-level actorder: kWeight is llm-compressor's "static" default; nullopt = null.
  std::optional<ActOrder> actorder = ActOrder::kWeight;
  bool offload_hessians = false;

  ObserverOverrides observer_overrides;
  bool bypass_divisibility_checks = false;
  // GPTQ always; RTN when some activation scale is static, or a KV cache scheme is set
  // (otherwise llm-compressor runs its data-free pipeline).
  bool requires_calibration_data = false;

  // The config.json `quantization_config` this plan produces.
  QuantizationConfig ToQuantizationConfig() const;
  bool operator==(const QuantizationPlan&) const = default;
};

struct RecipePlan {
  std::optional<SmoothQuantPlan> smoothquant;  // runs first
  std::optional<QuantizationPlan> quantization;
  std::vector<std::string> warnings;  // "<source>:<line>: ..." for each key dropped or ignored
};

// `text` is YAML (JSON is a subset). `source_name` prefixes error messages.
absl::StatusOr<RecipePlan> ParseRecipe(std::string_view text, std::string_view source_name = "recipe");
// Reads the file and parses it with the path as source name.
absl::StatusOr<RecipePlan> ParseRecipeFile(const std::string& path);

}  // namespace lowbit

#endif  // LOWBIT_COMMON_RECIPE_H_
