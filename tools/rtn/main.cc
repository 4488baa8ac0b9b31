// lowbit-rtn: round-to-nearest quantization of a Hugging Face model directory into a
// compressed-tensors checkpoint (llm-compressor's QuantizationModifier without data).
//   lowbit-rtn --model DIR --out DIR (--scheme W4A16 | --recipe recipe.yaml)
#include <cstdio>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "common/file_util.h"
#include "common/flags_help.h"
#include "tools/quantize_main.h"

ABSL_FLAG(std::string, model, "", "source model directory (config.json + safetensors)");
ABSL_FLAG(std::string, out, "", "output checkpoint directory (replaced atomically)");
ABSL_FLAG(std::string, scheme, "", "preset: W8A8, W8A16, W4A16, W4A16_ASYM, FP8_DYNAMIC");
ABSL_FLAG(std::string, recipe, "", "llm-compressor recipe YAML (QuantizationModifier)");

int main(int argc, char** argv) {
  lowbit::HelpListsFlagsOf(__FILE__);
  absl::SetProgramUsageMessage("lowbit-rtn --model DIR --out DIR (--scheme NAME | --recipe FILE)");
  absl::ParseCommandLine(argc, argv);
  const std::string model = absl::GetFlag(FLAGS_model), out = absl::GetFlag(FLAGS_out);
  const std::string scheme = absl::GetFlag(FLAGS_scheme), recipe = absl::GetFlag(FLAGS_recipe);
  if (model.empty() || out.empty() || scheme.empty() == recipe.empty()) {
    std::fprintf(stderr, "usage: lowbit-rtn --model DIR --out DIR (--scheme NAME | --recipe FILE)\n");
    return 2;
  }
  absl::StatusOr<lowbit::QuantizationPlan> plan;
  std::optional<std::string> recipe_text;
  if (!recipe.empty()) {
    absl::StatusOr<std::string> text = lowbit::ReadFileToString(recipe);
    absl::StatusOr<lowbit::RecipePlan> parsed =
        text.ok() ? lowbit::ParseRecipe(*text, recipe) : absl::StatusOr<lowbit::RecipePlan>(text.status());
    if (parsed.ok()) {
      for (const std::string& w : parsed->warnings) std::fprintf(stderr, "warning: %s\n", w.c_str());
      if (parsed->smoothquant) {
        plan = absl::FailedPreconditionError(recipe + ": SmoothQuantModifier needs calibration data; lowbit-rtn runs round-to-nearest only");
      } else if (!parsed->quantization) {
        plan = absl::InvalidArgumentError(recipe + ": the recipe has no quantization modifier");
      } else {
        plan = *parsed->quantization;
        recipe_text = *text;
      }
    } else {
      plan = parsed.status();
    }
  } else {
    plan = lowbit::PresetPlan(scheme);
  }
  if (!plan.ok()) {
    std::fprintf(stderr, "lowbit-rtn: %s\n", std::string(plan.status().message()).c_str());
    return 1;
  }
  absl::StatusOr<lowbit::RtnResult> result = lowbit::QuantizeDirectory(model, out, *plan, recipe_text);
  if (!result.ok()) {
    std::fprintf(stderr, "lowbit-rtn: %s\n", std::string(result.status().message()).c_str());
    return 1;
  }
  double worst = 0;
  for (const auto& e : result->errors) worst = std::max(worst, e.relative);
  std::printf("wrote %s: %zu Linear modules quantized, worst relative weight error %.3f%%\n", out.c_str(),
              result->errors.size(), 100.0 * worst);
  return 0;
}
