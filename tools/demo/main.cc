// lowbit-demo: the README's main job. Generates the default synthetic Llama, quantizes its
// weights with round-to-nearest for each weight scheme, writes one compressed-tensors
// checkpoint per scheme, and prints a table of per-layer relative weight error.
//   lowbit-demo [--out demo-out] [--schemes W8A8,W8A16,W4A16,W4A16_ASYM,FP8_DYNAMIC]
#include <cstdio>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_split.h"
#include "tools/gen_model/synthetic_llama.h"
#include "tools/quantize_main.h"

ABSL_FLAG(std::string, out, "demo-out", "output directory: model/ and one checkpoint per scheme");
ABSL_FLAG(std::string, schemes, "W8A8,W8A16,W4A16,W4A16_ASYM,FP8_DYNAMIC", "comma-separated preset schemes");

namespace lowbit {
namespace {

namespace fs = std::filesystem;

// "model.layers.0.self_attn.q_proj" -> "L0 q_proj"; "lm_head" stays.
std::string ShortName(const std::string& module) {
  std::vector<std::string> parts = absl::StrSplit(module, '.');
  if (parts.size() >= 5 && parts[0] == "model" && parts[1] == "layers") return "L" + parts[2] + " " + parts.back();
  return module;
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
  std::printf("Generated %s: Llama, hidden %lld, intermediate %lld, %lld layers, %lld/%lld heads, vocab %lld, bf16, "
              "%d outlier channels\n\n",
              model_dir.c_str(), (long long)options.hidden, (long long)options.intermediate, (long long)options.layers,
              (long long)options.heads, (long long)options.kv_heads, (long long)options.vocab,
              options.outlier_channels);

  std::map<std::string, std::map<std::string, double>> table;  // module -> scheme -> rel error
  std::vector<std::string> modules;
  for (const std::string& scheme : schemes) {
    absl::StatusOr<QuantizationPlan> plan = PresetPlan(scheme);
    if (!plan.ok()) {
      std::fprintf(stderr, "lowbit-demo: %s\n", std::string(plan.status().message()).c_str());
      return 2;
    }
    const std::string out_dir = (out / scheme).string();
    absl::StatusOr<RtnResult> result = QuantizeDirectory(model_dir, out_dir, *plan, std::nullopt);
    if (!result.ok()) {
      std::fprintf(stderr, "lowbit-demo: %s: %s\n", scheme.c_str(), std::string(result.status().message()).c_str());
      return 1;
    }
    for (const LinearError& e : result->errors) {
      if (scheme == schemes.front()) modules.push_back(e.module);
      table[e.module][scheme] = e.relative;
    }
    std::printf("Wrote %s\n", out_dir.c_str());
  }

  std::printf("\nRelative weight error ||W - dequant(quant(W))||_F / ||W||_F, round-to-nearest, percent:\n\n");
  std::printf("| %-14s |", "layer");
  for (const auto& s : schemes) std::printf(" %11s |", s.c_str());
  std::printf("\n|%s|", std::string(16, '-').c_str());
  for (size_t i = 0; i < schemes.size(); ++i) std::printf("%s|", std::string(13, '-').c_str());
  std::printf("\n");
  std::map<std::string, double> mean;
  for (const std::string& m : modules) {
    std::printf("| %-14s |", ShortName(m).c_str());
    for (const auto& s : schemes) {
      std::printf(" %10.3f%% |", 100.0 * table[m][s]);
      mean[s] += table[m][s] / modules.size();
    }
    std::printf("\n");
  }
  std::printf("| %-14s |", "mean");
  for (const auto& s : schemes) std::printf(" %10.3f%% |", 100.0 * mean[s]);
  std::printf("\n\nlm_head stays in bf16 (ignored, as vLLM expects). Each checkpoint is in the compressed-tensors\n"
              "format vLLM loads; "
              "check one with: /usr/bin/python3 tests/python/check_checkpoint.py --original %s --quantized %s\n",
              model_dir.c_str(), (out / schemes.front()).string().c_str());
  return 0;
}

}  // namespace
}  // namespace lowbit

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Quantizes the default synthetic Llama with each scheme: lowbit-demo [--out DIR]");
  absl::ParseCommandLine(argc, argv);
  return lowbit::Run();
}
