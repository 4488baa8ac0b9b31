// Shared by lowbit-rtn and lowbit-demo: quantize a model directory with round-to-nearest
// under a quantization plan and write the checkpoint with its report.
#ifndef LOWBIT_TOOLS_QUANTIZE_MAIN_H_
#define LOWBIT_TOOLS_QUANTIZE_MAIN_H_

#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "calibrator/rtn.h"
#include "common/recipe.h"

namespace lowbit {

// A plan for a preset scheme: targets Linear, ignores lm_head (as the product docs do).
absl::StatusOr<QuantizationPlan> PresetPlan(const std::string& scheme);

// Quantizes `model_dir` under `plan` into `out_dir`; `recipe_yaml` (if any) is saved beside it
// as recipe.yaml. Returns the per-Linear errors (also written to report.json).
absl::StatusOr<RtnResult> QuantizeDirectory(const std::string& model_dir, const std::string& out_dir,
                                            const QuantizationPlan& plan,
                                            const std::optional<std::string>& recipe_yaml);

}  // namespace lowbit

#endif  // LOWBIT_TOOLS_QUANTIZE_MAIN_H_
