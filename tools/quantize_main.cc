#include "tools/quantize_main.h"

#include "absl/strings/str_cat.h"
#include "common/module_match.h"

namespace lowbit {

absl::StatusOr<QuantizationPlan> PresetPlan(const std::string& scheme) {
  absl::StatusOr<QuantScheme> preset = PresetScheme(scheme, {"Linear"});
  if (!preset.ok()) return preset.status();
  QuantizationPlan plan;
  plan.config_groups["group_0"] = *std::move(preset);
  plan.ignore = {"lm_head"};
  return plan;
}

absl::StatusOr<RtnResult> QuantizeDirectory(const std::string& model_dir, const std::string& out_dir,
                                            const QuantizationPlan& plan,
                                            const std::optional<std::string>& recipe_yaml) {
  if (plan.algorithm != QuantAlgorithm::kRtn) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the recipe asks for ", std::string(QuantAlgorithmName(plan.algorithm)),
        ", which needs calibration data and the calibration pipeline; lowbit-rtn runs round-to-nearest only"));
  }
  absl::StatusOr<std::unique_ptr<SafetensorsModel>> model = SafetensorsModel::Open(model_dir);
  if (!model.ok()) return model.status();
  absl::StatusOr<SchemeResolver> resolver = SchemeResolver::Create(plan.config_groups, plan.ignore);
  if (!resolver.ok()) return resolver.status();
  static constexpr std::string_view kLinearClasses[] = {"Linear", "Module"};
  auto resolve = [&](const std::string& module) { return resolver->Resolve(module, kLinearClasses); };
  absl::StatusOr<RtnResult> result = QuantizeModelRtn(**model, plan.ToQuantizationConfig(), resolve);
  if (!result.ok()) return result.status();
  if (result->errors.empty()) {
    return absl::InvalidArgumentError("the plan's targets match no Linear module of the model: nothing to quantize");
  }

  nlohmann::json modules = nlohmann::json::array();
  for (const LinearError& e : result->errors) {
    modules.push_back({{"module", e.module}, {"group", e.group}, {"relative_error", e.relative},
                       {"max_abs_error", e.max_abs}});
  }
  CheckpointSpec spec;
  spec.source_dir = model_dir;
  spec.out_dir = out_dir;
  spec.quantization = result->config;
  spec.tensors = result->tensors;
  spec.recipe_yaml = recipe_yaml;
  spec.report = nlohmann::json{{"algorithm", "rtn"}, {"modules", modules}};
  if (absl::Status s = WriteCheckpoint(spec); !s.ok()) return s;
  return result;
}

}  // namespace lowbit
