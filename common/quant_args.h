// The compressed-tensors quantization model: QuantizationArgs, QuantizationScheme (a config
// group), the preset schemes (W8A8, W8A16, W4A16, W4A16_ASYM, FP8, FP8_DYNAMIC), and the
// `quantization_config` block of config.json, read and written as compressed-tensors and vLLM
// expect. Facts: shared/reference/compressed-tensors-format*.md.
#ifndef LOWBIT_COMMON_QUANT_ARGS_H_
#define LOWBIT_COMMON_QUANT_ARGS_H_

#include <array>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace lowbit {

enum class QuantType { kInt, kFloat };
enum class Strategy { kTensor, kChannel, kGroup, kBlock, kToken, kTensorGroup, kAttnHead };
// "static" is an alias of "weight" and "dynamic" of "group"; the spelling read is kept in
// QuantArgs::actorder_spelling so a file round-trips as written.
enum class ActOrder { kNone, kWeight, kGroup };
enum class Dynamic { kStatic, kDynamic, kLocal };

std::string_view QuantTypeName(QuantType t);
std::string_view StrategyName(Strategy s);
std::string_view DynamicName(Dynamic d);
std::optional<QuantType> ParseQuantType(std::string_view s);   // case-insensitive
std::optional<Strategy> ParseStrategy(std::string_view s);     // case-insensitive
// Accepts "weight", "static", "group", "dynamic" (case-insensitive).
std::optional<ActOrder> ParseActOrder(std::string_view s);

struct QuantArgs {
  int num_bits = 8;
  QuantType type = QuantType::kInt;
  bool symmetric = true;
  std::optional<int> group_size;
  std::optional<Strategy> strategy;  // nullopt until inferred by Normalize()
  std::optional<std::array<int, 2>> block_structure;
  Dynamic dynamic = Dynamic::kStatic;
  ActOrder actorder = ActOrder::kNone;
  std::string actorder_spelling;  // as written ("static", "weight", "group"...); empty = null
  std::optional<std::string> observer;
  nlohmann::json observer_kwargs = nlohmann::json::object();

  bool operator==(const QuantArgs&) const = default;
  // The strategy after Normalize(); tensor if somehow unset.
  Strategy strategy_or_tensor() const { return strategy.value_or(Strategy::kTensor); }
  int qmin() const { return -(1 << (num_bits - 1)); }
  int qmax() const { return (1 << (num_bits - 1)) - 1; }
};

// Infers the strategy (group_size null -> tensor, > 0 -> group, -1 -> channel), fills the
// default observer, and applies compressed-tensors' validation rules. The error names the rule.
absl::Status NormalizeQuantArgs(QuantArgs& args);
// Extra rules for input activations (token/tensor/group/tensor_group/attn_head, no actorder).
absl::Status ValidateActivationArgs(const QuantArgs& args);

struct QuantScheme {
  std::vector<std::string> targets;
  std::optional<QuantArgs> weights;
  std::optional<QuantArgs> input_activations;
  std::optional<QuantArgs> output_activations;
  std::optional<std::string> format;
  bool operator==(const QuantScheme&) const = default;
};

// The preset names Lowbit supports, and the scheme each expands to (with `targets`).
const std::vector<std::string>& PresetNames();
absl::StatusOr<QuantScheme> PresetScheme(std::string_view name, std::vector<std::string> targets);

// The compression format compressed-tensors infers for a scheme: int-quantized,
// pack-quantized, float-quantized or naive-quantized; "dense" for no weight quantization.
std::string InferFormat(const QuantScheme& scheme);

nlohmann::json QuantArgsToJson(const QuantArgs& args);
// Unknown keys are accepted (newer compressed-tensors versions add some); bad values are errors.
absl::StatusOr<QuantArgs> QuantArgsFromJson(const nlohmann::json& j);

inline constexpr std::string_view kCompressedTensorsVersion = "0.17.0";

// config.json -> "quantization_config".
struct QuantizationConfig {
  std::string format;  // global format; "mixed-precision" when groups differ
  std::map<std::string, QuantScheme> config_groups;
  std::vector<std::string> ignore;
  std::optional<QuantArgs> kv_cache_scheme;
  std::string quantization_status = "compressed";
  std::string version = std::string(kCompressedTensorsVersion);
  bool operator==(const QuantizationConfig&) const = default;
};

// Builds a config from named groups, filling per-group and global formats.
QuantizationConfig MakeQuantizationConfig(std::map<std::string, QuantScheme> groups,
                                          std::vector<std::string> ignore,
                                          std::optional<QuantArgs> kv_cache_scheme);
nlohmann::json QuantizationConfigToJson(const QuantizationConfig& config);
absl::StatusOr<QuantizationConfig> QuantizationConfigFromJson(const nlohmann::json& j);

}  // namespace lowbit

#endif  // LOWBIT_COMMON_QUANT_ARGS_H_
