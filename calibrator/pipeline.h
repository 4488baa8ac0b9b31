// The sequential calibration pipeline (design.md §1 step 2; llm-compressor's "sequential"
// pipeline as it runs today): embed the samples, then for each decoder layer
//   1. run the layer on the current hidden states with hooks that collect what the recipe
//      needs — GPTQ Hessians (one per distinct Linear input), static activation ranges
//      (FP8 input_scale), K/V ranges after RoPE (k_scale / v_scale);
//   2. quantize every targeted Linear (GPTQ or round-to-nearest);
//   3. re-run the layer with GPTQ's quantized weights to produce the next layer's inputs.
// SmoothQuant, when the recipe has it, runs first as its own pass over the float model (as
// llm-compressor's default "independent" pipeline does), and its smoothing is folded into
// the norms and Linears before step 1 of each layer.
//
// Held-out samples run alongside: an original-model stream and a quantized-model stream
// (quantized weights, activations and KV cache fake-quantized exactly as vLLM runs them), so
// the report can give KL divergence, top-1 agreement and perplexity at the end.
//
// Memory: one decoder layer in float32 at a time, plus the hidden states of the samples.
#ifndef LOWBIT_CALIBRATOR_PIPELINE_H_
#define LOWBIT_CALIBRATOR_PIPELINE_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "calibrator/compute.h"
#include "calibrator/eval_metrics.h"
#include "common/recipe.h"
#include "nlohmann/json.hpp"

namespace lowbit {

struct CalibrationJob {
  std::string model_dir;
  std::string out_dir;
  RecipePlan plan;
  std::string recipe_yaml;  // saved as recipe.yaml
  std::vector<std::vector<int32_t>> calibration;  // token ids per sample
  std::vector<std::vector<int32_t>> heldout;      // for the report's KL / top-1 / perplexity
  std::vector<std::string> warnings;              // carried into report.json (dataset, recipe)
  nlohmann::json data_summary = nlohmann::json::object();  // how the samples were chosen
};

struct PipelineOptions {
  // Rows (tokens) per forward chunk: bounds the temporary buffers of a layer forward.
  int64_t max_chunk_tokens = 4096;
  // Rows per chunk when computing held-out logits ([rows, vocab] floats).
  int64_t max_logit_rows = 512;
  // Per-layer resume: when set, the state after each finished decoder layer (hidden states,
  // tensors produced so far, module results, SmoothQuant scales) is written here atomically,
  // and a run that finds state from an earlier run of the same job continues after its last
  // layer. The checkpoint is the same as an uninterrupted run's.
  std::string resume_dir;
};

// One progress step, for bars and WatchJob streams.
struct ProgressEvent {
  // "smoothquant", "start" (the layer loop begins at `layer`: 0, or the first layer after those a
  // resume restored), "calibrate", "quantize" (a module starts), "quantized" (it is done: loss and
  // module_seconds are its own), "propagate", "evaluate", "layer_saved", "write"
  std::string phase;
  int64_t layer = 0;    // 0-based; num_layers for the LM head / final steps
  int64_t num_layers = 0;
  std::string module;   // the Linear being quantized, when there is one
  double loss = 0.0;    // the last finished module's GPTQ loss
  double module_seconds = 0.0;  // "quantized": that module's time
  double elapsed_s = 0.0;
  double eta_s = -1.0;  // -1 = unknown
};
using ProgressFn = std::function<void(const ProgressEvent&)>;

struct ModuleResult {
  std::string module;
  std::string group;
  std::string algorithm;  // "GPTQ" or "RTN"
  double loss = 0.0;      // GPTQ: Σ(w−q)²/(2d²); RTN: 0 (not computed)
  double weight_relative_error = 0.0;  // ‖W − W'‖_F / ‖W‖_F against the (smoothed) float weight
  double seconds = 0.0;
  int64_t samples = 0;    // sequences that built its Hessian
  bool fell_back_to_rtn = false;
  std::string warning;
};

struct CalibrationResult {
  std::vector<ModuleResult> modules;
  std::optional<LogitComparisonSummary> eval;  // absent when there are no held-out samples
  double seconds = 0.0;
  nlohmann::json report;  // what report.json holds
};

// Runs the job and writes the checkpoint to job.out_dir atomically (nothing is left behind on
// error or cancellation). Errors: InvalidArgument (bad model, tokens ≥ vocab, a recipe that
// matches nothing, a group size that does not divide K, ...), Cancelled.
absl::StatusOr<CalibrationResult> RunCalibration(const CalibrationJob& job, const PipelineOptions& options,
                                                 Compute& compute, const ProgressFn& progress = nullptr,
                                                 const std::atomic<bool>* cancel = nullptr);

// A recipe for a preset scheme run the way llm-compressor's examples run it:
// GPTQModifier (or QuantizationModifier for "rtn") targeting Linear, ignoring lm_head.
std::string PresetRecipeYaml(const std::string& scheme, bool gptq);

// PresetRecipeYaml plus what the product guides add: an FP8 KV cache with FP8 (with either
// algorithm, so the two stay comparable) and SmoothQuant (strength 0.8) before GPTQ for W8A8.
// The two demos (tools/demo, `lowbit demo`) run these.
std::string GuideRecipeYaml(const std::string& scheme, bool gptq);

}  // namespace lowbit

#endif  // LOWBIT_CALIBRATOR_PIPELINE_H_
