#include "calibrator/service/job_spec.h"

#include <filesystem>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "calibrator/job_builder.h"
#include "common/path_guard.h"

namespace lowbit::calibrator {

namespace {

absl::StatusOr<RecipeChoice> RecipeOf(const v1::JobSpec& spec) {
  switch (spec.recipe_case()) {
    case v1::JobSpec::kScheme: {
      std::string algorithm = spec.algorithm().empty() ? "gptq" : spec.algorithm();
      if (spec.scheme().empty()) return absl::InvalidArgumentError("spec.scheme is empty");
      return ResolveRecipe("", "spec.scheme", spec.scheme(), algorithm);
    }
    case v1::JobSpec::kRecipeYaml:
      if (!spec.algorithm().empty()) {
        return absl::InvalidArgumentError("spec.algorithm applies to a scheme; a recipe names its own modifier");
      }
      if (spec.recipe_yaml().empty()) return absl::InvalidArgumentError("spec.recipe_yaml is empty");
      return ResolveRecipe(spec.recipe_yaml(), "recipe_yaml", "", "");
    default:
      return absl::InvalidArgumentError("the spec needs a scheme or a recipe_yaml");
  }
}

absl::StatusOr<std::vector<TokenSequence>> SamplesOf(const v1::JobSpec& spec, const ServicePaths& paths,
                                                     std::string* label) {
  switch (spec.data_case()) {
    case v1::JobSpec::kDataset: {
      absl::StatusOr<std::string> file = paths.uploads->DatasetFile(spec.dataset());
      if (!file.ok()) return file.status();
      *label = absl::StrCat("dataset:", spec.dataset());
      return LoadTokenDataset(*file);
    }
    case v1::JobSpec::kInlineTokens: {
      *label = "inline";
      std::vector<TokenSequence> out;
      for (const auto& s : spec.inline_tokens().sequences()) out.emplace_back(s.ids().begin(), s.ids().end());
      if (out.empty()) return absl::InvalidArgumentError("spec.inline_tokens has no sequences");
      return out;
    }
    default:
      return absl::InvalidArgumentError("the spec needs data: a dataset name or inline_tokens");
  }
}

}  // namespace

std::optional<std::string> UploadedModelName(const v1::JobSpec& spec) {
  constexpr absl::string_view kPrefix = "uploads/";
  if (!absl::StartsWith(spec.model(), kPrefix)) return std::nullopt;
  return spec.model().substr(kPrefix.size());
}

absl::StatusOr<std::string> ResolveModel(const v1::JobSpec& spec, const ServicePaths& paths) {
  absl::StatusOr<std::string> dir;
  if (std::optional<std::string> uploaded = UploadedModelName(spec)) {
    dir = paths.uploads->ModelDir(*uploaded);
  } else {
    dir = ResolveUnderRoot(paths.model_root, spec.model(), "model");
  }
  if (!dir.ok()) return dir.status();
  std::error_code ec;
  if (!std::filesystem::is_regular_file(*dir + "/config.json", ec)) {
    return absl::InvalidArgumentError(
        absl::StrCat("model '", spec.model(), "' is not a model directory (no config.json)"));
  }
  return dir;
}

absl::Status ValidateJobSpec(const v1::JobSpec& spec, const ServicePaths& paths) {
  if (absl::StatusOr<std::string> m = ResolveModel(spec, paths); !m.ok()) return m.status();
  if (absl::StatusOr<RecipeChoice> r = RecipeOf(spec); !r.ok()) return r.status();
  switch (spec.data_case()) {
    case v1::JobSpec::kDataset:
      if (auto f = paths.uploads->DatasetFile(spec.dataset()); !f.ok()) return f.status();
      break;
    case v1::JobSpec::kInlineTokens:
      if (spec.inline_tokens().sequences_size() == 0) {
        return absl::InvalidArgumentError("spec.inline_tokens has no sequences");
      }
      for (int i = 0; i < spec.inline_tokens().sequences_size(); ++i) {
        if (spec.inline_tokens().sequences(i).ids_size() == 0) {
          return absl::InvalidArgumentError(absl::StrCat("spec.inline_tokens.sequences[", i,
                                                         "] is empty; every sequence needs at least one token id"));
        }
      }
      break;
    default:
      return absl::InvalidArgumentError("the spec needs data: a dataset name or inline_tokens");
  }
  if (!spec.output_name().empty()) {
    if (absl::Status s = ValidatePlainName(spec.output_name(), "output_name"); !s.ok()) return s;
  }
  if (spec.num_calibration_samples() < 0) return absl::InvalidArgumentError("num_calibration_samples is negative");
  if (spec.max_seq_length() < 0) return absl::InvalidArgumentError("max_seq_length is negative");
  if (spec.heldout_fraction() >= 1.0) return absl::InvalidArgumentError("heldout_fraction must be below 1");
  return absl::OkStatus();
}

std::string OutputName(const v1::Job& job) {
  return job.spec().output_name().empty() ? job.id() : job.spec().output_name();
}

DatasetOptions DatasetOptionsFromSpec(const v1::JobSpec& spec) {
  DatasetOptions o;
  o.num_calibration_samples = spec.num_calibration_samples() > 0 ? spec.num_calibration_samples() : 512;
  o.max_seq_length = spec.max_seq_length() > 0 ? spec.max_seq_length() : 2048;
  o.heldout_fraction = !spec.has_heldout_fraction() || spec.heldout_fraction() < 0 ? 0.1 : spec.heldout_fraction();
  o.seed = spec.seed() != 0 ? spec.seed() : 42;
  return o;
}

absl::StatusOr<CalibrationJob> BuildJobFromSpec(const v1::JobSpec& spec, const std::string& out_dir,
                                                const ServicePaths& paths) {
  absl::StatusOr<std::string> model = ResolveModel(spec, paths);
  if (!model.ok()) return model.status();
  absl::StatusOr<RecipeChoice> recipe = RecipeOf(spec);
  if (!recipe.ok()) return recipe.status();
  std::string label;
  absl::StatusOr<std::vector<TokenSequence>> samples = SamplesOf(spec, paths, &label);
  if (!samples.ok()) return samples.status();
  return BuildCalibrationJob(*model, out_dir, *std::move(recipe), *samples, DatasetOptionsFromSpec(spec), label);
}

}  // namespace lowbit::calibrator
