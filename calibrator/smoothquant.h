// SmoothQuant as llm-compressor computes it (shared/reference/llm-compressor-algorithms.md §3.2):
// statistics, smoothing scales, folding into the norm and the balance Linears, and resolving a
// recipe's mappings onto one decoder layer.
//
//   statistics  per-channel running min and max of the smooth layer's output (not absmax);
//   scale       act_range = max - min, w_range_j = 2 * max over balance Linears of max_i |W[i, j]|,
//               s = act_range^a / w_range^(1-a)  (s = act_range where w_range == 0),
//               log_equalization: s = act_range / log2(2 + act_range);
//               then s = max(s, 1e-5) for both algorithms;
//   fold        norm_weight /= s, W[:, j] *= s_j for every balance Linear.
//
// Folding leaves the layer's function unchanged: the norm's output is x * g / s and every
// balance Linear computes (x * g / s) (W diag(s))^T = (x * g) W^T. It must therefore reach every
// Linear that reads the norm's output; ResolveLayerSmoothMappings refuses a mapping that would
// balance only some of them.
//
// Scales are computed in double from float statistics and returned as float; llm-compressor runs
// the same formula in the model dtype on the GPU, so results agree to that dtype's rounding.
#ifndef LOWBIT_CALIBRATOR_SMOOTHQUANT_H_
#define LOWBIT_CALIBRATOR_SMOOTHQUANT_H_

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "calibrator/llama.h"
#include "common/recipe.h"

namespace lowbit {

inline constexpr double kMinSmoothingScale = 1e-5;  // llm-compressor MINIMUM_SMOOTHING_SCALE

// Running per-channel min and max over all rows seen (llm-compressor keeps both, not absmax).
struct ChannelRange {
  std::vector<float> min, max;  // [cols]; empty until the first Update
  int64_t rows_seen = 0;

  int64_t cols() const { return static_cast<int64_t>(min.size()); }
  bool empty() const { return rows_seen == 0; }
  // x: [rows, cols] row-major. The first call with rows > 0 fixes cols; a later call with
  // another width is InvalidArgument. NaN values are ignored.
  absl::Status Update(const float* x, int64_t rows, int64_t cols);
};

// Smoothing scales for one mapping, [cols]. Every balance Linear must have in == act.cols().
// InvalidArgument for an empty range (no rows observed), no balance Linears, a width mismatch,
// or alpha outside [0, 1].
absl::StatusOr<std::vector<float>> SmoothingScales(const ChannelRange& act,
                                                   std::span<const LinearWeights* const> balance,
                                                   double alpha, SmoothingAlgorithm algo);

// Folds s into the smooth layer and the balance Linears: norm_weight[j] /= s[j],
// W[i, j] *= s[j] for every balance Linear (biases are per output row and stay). Checks all
// sizes before changing anything (InvalidArgument naming the mismatch).
absl::Status ApplySmoothing(std::span<const float> s, std::vector<float>& norm_weight,
                            std::span<LinearWeights* const> balance);

// One mapping resolved onto one decoder layer, by module suffix below the layer prefix.
struct LayerSmoothMapping {
  std::string smooth;                // "input_layernorm" / "post_attention_layernorm"
  std::vector<std::string> balance;  // in kLayerLinears order: "self_attn.q_proj", ...
  LinearSite site;                   // where the smooth layer's output enters the Linears
  int mapping_index = 0;             // index into SmoothQuantPlan::mappings
  bool operator==(const LayerSmoothMapping&) const = default;
};

// Resolves `plan.mappings` on the decoder layer whose modules are named `layer_prefix` +
// suffix (e.g. "model.layers.3."), matching targets as module_match.h does on the full names.
// The layer's modules are its two norms (class `norm_class`), the seven Linears of
// kLayerLinears (class "Linear"), "self_attn" (LlamaAttention) and "mlp" (LlamaMLP).
//   - A mapping whose smooth layer and balance Linears are all ignored (plan.ignore) is skipped;
//     a partly ignored one is applied in full, as llm-compressor does.
//   - Errors (InvalidArgument, naming the mapping and the layer): a smooth target matching
//     nothing or more than one module; a smooth layer that is not input_layernorm or
//     post_attention_layernorm ("smooth layer X is not a norm feeding Linears Lowbit can
//     smooth"); a balance target matching nothing or a non-Linear; a balance Linear that does
//     not read the smooth layer's output; a smooth layer whose readers are not all balanced
//     (folding would change the model); two mappings on the same smooth layer.
absl::StatusOr<std::vector<LayerSmoothMapping>> ResolveLayerSmoothMappings(
    const SmoothQuantPlan& plan, std::string_view layer_prefix,
    std::string_view norm_class = "LlamaRMSNorm");

// Convenience for the pipeline: scales from `act` and the mapping's balance Linears in
// `weights`, then folds them. Returns the scales used.
absl::StatusOr<std::vector<float>> SmoothLayer(const LayerSmoothMapping& mapping,
                                               const ChannelRange& act, double alpha,
                                               SmoothingAlgorithm algo, DecoderLayerWeights& weights);

}  // namespace lowbit

#endif  // LOWBIT_CALIBRATOR_SMOOTHQUANT_H_
