#include "calibrator/job_builder.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/quant_args.h"

namespace lowbit {

absl::StatusOr<RecipeChoice> ResolveRecipe(const std::string& recipe_yaml, const std::string& source_name,
                                           const std::string& scheme, const std::string& algorithm) {
  if (recipe_yaml.empty() == scheme.empty()) {
    return absl::InvalidArgumentError("give exactly one of a recipe and a scheme");
  }
  RecipeChoice choice;
  absl::StatusOr<RecipePlan> plan;
  if (!recipe_yaml.empty()) {
    choice.recipe_yaml = recipe_yaml;
    plan = ParseRecipe(recipe_yaml, source_name);
  } else {
    if (algorithm != "gptq" && algorithm != "rtn") {
      return absl::InvalidArgumentError(absl::StrCat("algorithm must be gptq or rtn, not '", algorithm, "'"));
    }
    // Named before a recipe is made of it: an unknown name would otherwise be reported at a line
    // of that generated YAML.
    if (absl::StatusOr<QuantScheme> known = PresetScheme(scheme, {"Linear"}); !known.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(source_name, ": ", known.status().message()));
    }
    choice.recipe_yaml = PresetRecipeYaml(scheme, algorithm == "gptq");
    plan = ParseRecipe(choice.recipe_yaml, source_name);
  }
  if (!plan.ok()) return plan.status();
  choice.plan = *std::move(plan);
  return choice;
}

absl::StatusOr<CalibrationJob> BuildCalibrationJob(const std::string& model_dir, const std::string& out_dir,
                                                   RecipeChoice recipe, const std::vector<TokenSequence>& samples,
                                                   const DatasetOptions& options, const std::string& data_label) {
  CalibrationJob job;
  job.model_dir = model_dir;
  job.out_dir = out_dir;
  job.recipe_yaml = std::move(recipe.recipe_yaml);
  job.plan = std::move(recipe.plan);
  job.warnings = job.plan.warnings;
  absl::StatusOr<DatasetSplit> split = SplitDataset(samples, options);
  if (!split.ok()) return split.status();
  job.calibration = std::move(split->calibration);
  job.heldout = std::move(split->heldout);
  job.warnings.insert(job.warnings.end(), split->warnings.begin(), split->warnings.end());
  job.data_summary = {{"path", data_label},
                      {"num_calibration_samples", options.num_calibration_samples},
                      {"max_seq_length", options.max_seq_length ? nlohmann::json(*options.max_seq_length) : nullptr},
                      {"heldout_fraction", options.heldout_fraction},
                      {"seed", options.seed},
                      {"shuffle", options.shuffle}};
  return job;
}

}  // namespace lowbit
