// libFuzzer target for a checkpoint's config.json as the runtime reads it (a client sends one in
// every LoadModelStream header; checkpoints on disk carry one): the JSON parse, the
// compressed-tensors `quantization_config` (QuantizationConfigFromJson) and the scheme resolver
// built from its groups. Any bytes must give a config or INVALID_ARGUMENT, never a crash or an
// escaped exception (nlohmann-json throws on a value of the wrong type if asked without a check);
// an accepted config must serialize, parse back to the same config, and resolve module names.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "common/module_match.h"
#include "common/quant_args.h"
#include "nlohmann/json.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  const nlohmann::json config = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (config.is_discarded() || !config.is_object()) return 0;
  auto qc = config.find("quantization_config");
  if (qc == config.end()) return 0;
  absl::StatusOr<lowbit::QuantizationConfig> parsed = lowbit::QuantizationConfigFromJson(*qc);
  if (!parsed.ok()) {
    if (parsed.status().code() != absl::StatusCode::kInvalidArgument) std::abort();
    return 0;
  }
  // What we accept we can write back, and reading that back gives the same config.
  const nlohmann::json again = lowbit::QuantizationConfigToJson(*parsed);
  absl::StatusOr<lowbit::QuantizationConfig> reparsed = lowbit::QuantizationConfigFromJson(again);
  if (!reparsed.ok()) std::abort();
  if (lowbit::QuantizationConfigToJson(*reparsed) != again) std::abort();
  auto resolver = lowbit::SchemeResolver::Create(parsed->config_groups, parsed->ignore);
  if (!resolver.ok()) {
    if (resolver.status().code() != absl::StatusCode::kInvalidArgument) std::abort();
    return 0;
  }
  constexpr std::string_view kLinear[] = {"Linear"};
  for (std::string_view m : {"model.layers.0.self_attn.q_proj", "model.layers.31.mlp.down_proj", "lm_head"}) {
    (void)resolver->Resolve(m, kLinear);
  }
  return 0;
}
