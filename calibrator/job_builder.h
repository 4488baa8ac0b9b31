// Building a CalibrationJob from its parts, shared by `lowbit-calibrator calibrate` (flags) and
// the calibrator service (JobSpec): the recipe (a YAML text, or a preset scheme run with GPTQ or
// round-to-nearest) parsed into a plan, and the token samples split into calibration and
// held-out sets. The same inputs give the same job, so the CLI and the service write the same
// checkpoint.
#ifndef LOWBIT_CALIBRATOR_JOB_BUILDER_H_
#define LOWBIT_CALIBRATOR_JOB_BUILDER_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "calibrator/dataset.h"
#include "calibrator/pipeline.h"
#include "common/recipe.h"

namespace lowbit {

struct RecipeChoice {
  std::string recipe_yaml;  // given, or PresetRecipeYaml(scheme, ...)
  RecipePlan plan;
};

// Exactly one of `recipe_yaml` and `scheme` must be non-empty. `algorithm` ("gptq" or "rtn")
// applies to a scheme. `source_name` prefixes recipe parse errors. InvalidArgument otherwise
// (an unknown scheme or algorithm, a recipe that does not parse).
absl::StatusOr<RecipeChoice> ResolveRecipe(const std::string& recipe_yaml, const std::string& source_name,
                                           const std::string& scheme, const std::string& algorithm);

// Splits `samples` with `options` and fills the job (plan, recipe, calibration / held-out sets,
// warnings, data summary with `data_label` as its "path").
absl::StatusOr<CalibrationJob> BuildCalibrationJob(const std::string& model_dir, const std::string& out_dir,
                                                   RecipeChoice recipe, const std::vector<TokenSequence>& samples,
                                                   const DatasetOptions& options, const std::string& data_label);

}  // namespace lowbit

#endif  // LOWBIT_CALIBRATOR_JOB_BUILDER_H_
