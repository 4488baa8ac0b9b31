// lowbit-demo: the README's main job. Generates the default synthetic Llama and calibration
// tokens, then for each scheme calibrates the model twice — round-to-nearest and the recipe
// llm-compressor's guides use (GPTQ; SmoothQuant 0.8 + GPTQ for W8A8; an FP8 KV cache with
// FP8) — writes every checkpoint, and prints one table comparing them on held-out samples.
//   lowbit-demo [--out demo-out] [--schemes W8A8,W4A16,W4A16_ASYM,FP8,FP8_DYNAMIC]
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "calibrator/compute.h"
#include "calibrator/pipeline.h"
#include "common/blas_env.h"
#include "common/flags_help.h"
#include "common/recipe.h"
#include "tools/gen_model/synthetic_llama.h"
#include "tools/gen_tokens/synthetic_tokens.h"

ABSL_FLAG(std::string, out, "demo-inprocess-out",
          "output directory: model/ and two checkpoints per scheme (not demo-out/, which is `lowbit demo`'s)");
ABSL_FLAG(std::string, schemes, "W8A8,W4A16,W4A16_ASYM,FP8,FP8_DYNAMIC", "comma-separated preset schemes");
ABSL_FLAG(int64_t, samples, 96, "synthetic calibration samples (a quarter is held out for the comparison)");

namespace lowbit {
namespace {

namespace fs = std::filesystem;

std::string Describe(const std::string& scheme, bool gptq) {
  std::string s = gptq ? (scheme == "W8A8" ? "SmoothQuant+GPTQ" : "GPTQ") : "RTN";
  if (scheme == "FP8") s += " +KV";
  return s;
}

int Run() {
  const fs::path out = absl::GetFlag(FLAGS_out);
  const std::vector<std::string> schemes = absl::StrSplit(absl::GetFlag(FLAGS_schemes), ',', absl::SkipEmpty());
  SyntheticLlamaOptions options;
  const std::string model_dir = (out / "model").string();
  if (absl::Status s = WriteSyntheticLlama(model_dir, options); !s.ok()) {
    std::fprintf(stderr, "lowbit-demo: %s\n", std::string(s.message()).c_str());
    return 1;
  }
  SyntheticTokenOptions token_options;
  token_options.vocab = options.vocab;
  token_options.samples = absl::GetFlag(FLAGS_samples);
  token_options.min_len = 32;
  token_options.max_len = 96;
  std::vector<std::vector<int32_t>> samples = SyntheticTokens(token_options);
  const size_t heldout = std::max<size_t>(1, samples.size() / 4);
  std::printf("Generated %s: Llama, hidden %lld, intermediate %lld, %lld layers, %lld/%lld heads, vocab %lld, bf16, "
              "%d outlier channels; %zu calibration + %zu held-out synthetic samples\n\n",
              model_dir.c_str(), (long long)options.hidden, (long long)options.intermediate, (long long)options.layers,
              (long long)options.heads, (long long)options.kv_heads, (long long)options.vocab,
              options.outlier_channels, samples.size() - heldout, heldout);

  struct Row {
    std::string scheme, method;
    LogitComparisonSummary rtn, calibrated;
    double seconds = 0;
  };
  std::vector<Row> rows;
  for (const std::string& scheme : schemes) {
    Row row{scheme, Describe(scheme, true), {}, {}, 0};
    for (bool gptq : {false, true}) {
      CalibrationJob job;
      job.model_dir = model_dir;
      job.out_dir = (out / absl::StrCat(scheme, gptq ? "-gptq" : "-rtn")).string();
      job.recipe_yaml = GuideRecipeYaml(scheme, gptq);
      absl::StatusOr<RecipePlan> plan = ParseRecipe(job.recipe_yaml, scheme);
      if (!plan.ok()) {
        std::fprintf(stderr, "lowbit-demo: %s\n", std::string(plan.status().message()).c_str());
        return 2;
      }
      job.plan = *std::move(plan);
      job.heldout.assign(samples.begin(), samples.begin() + heldout);
      job.calibration.assign(samples.begin() + heldout, samples.end());
      absl::StatusOr<CalibrationResult> result = RunCalibration(job, PipelineOptions{}, CpuCompute());
      if (!result.ok() || !result->eval) {
        std::fprintf(stderr, "lowbit-demo: %s: %s\n", scheme.c_str(),
                     result.ok() ? "no evaluation" : std::string(result.status().message()).c_str());
        return 1;
      }
      (gptq ? row.calibrated : row.rtn) = *result->eval;
      if (gptq) row.seconds = result->seconds;
      std::printf("Wrote %s\n", job.out_dir.c_str());
    }
    rows.push_back(row);
  }

  std::printf("\nQuantized vs original model on held-out samples (activations and KV cache quantized as vLLM runs "
              "them):\n\n");
  std::printf("| %-11s | %-18s | %-11s | %-11s | %-14s | %-18s | %-7s |\n", "scheme", "calibration", "KL (RTN)",
              "KL (calib.)", "top-1 (calib.)", "perplexity", "time");
  std::printf("|-------------|--------------------|-------------|-------------|----------------|--------------------|"
              "---------|\n");
  for (const Row& r : rows) {
    std::printf("| %-11s | %-18s | %11.5f | %11.5f | %13.2f%% | %7.2f -> %7.2f | %6.1fs |\n", r.scheme.c_str(),
                r.method.c_str(), r.rtn.kl_mean, r.calibrated.kl_mean, 100.0 * r.calibrated.top1_agreement,
                r.calibrated.ref_perplexity.value_or(NAN), r.calibrated.quant_perplexity.value_or(NAN), r.seconds);
  }
  std::printf("\nlm_head stays in bf16 (ignored, as vLLM expects). Each checkpoint is in the compressed-tensors format\n"
              "vLLM loads, with recipe.yaml and report.json beside it. Check one with:\n"
              "  /usr/bin/python3 tests/python/check_checkpoint.py --calibrated --original %s --quantized %s\n",
              model_dir.c_str(), (out / absl::StrCat(schemes.front(), "-gptq")).string().c_str());
  return 0;
}

}  // namespace
}  // namespace lowbit

int main(int argc, char** argv) {
  lowbit::EnsureBlasCoreType(argv);
  lowbit::HelpListsFlagsOf(__FILE__);
  absl::SetProgramUsageMessage("Calibrates the default synthetic Llama with each scheme: lowbit-demo [--out DIR]");
  absl::ParseCommandLine(argc, argv);
  return lowbit::Run();
}
