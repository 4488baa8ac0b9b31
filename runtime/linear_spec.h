// Reading a compressed-tensors checkpoint's quantized Linears: which modules are quantized,
// under which scheme (from config.json's quantization_config), and their tensors (weight,
// scales, zero points, g_idx, static input scale, bias), all checked for dtype and shape.
// Independent of the backend and of the wire: the registry prepares what this returns, and the
// same code serves a checkpoint read from a directory or one streamed over gRPC.
#ifndef LOWBIT_RUNTIME_LINEAR_SPEC_H_
#define LOWBIT_RUNTIME_LINEAR_SPEC_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/quant_args.h"
#include "common/tensor.h"
#include "nlohmann/json.hpp"

namespace lowbit::runtime {

// How the runtime executes a Linear.
enum class LinearKind {
  kW8A8Dynamic,  // int8 weight, int8 activations with one scale per row computed per request
  kW8A8Static,   // int8 weight, int8 activations with the checkpoint's per-tensor input_scale
  kFp8Static,    // E4M3 weight, E4M3 activations with the checkpoint's per-tensor input_scale
  kFp8Dynamic,   // E4M3 weight, E4M3 activations with one scale per row
  kW4A16,        // packed int4 weight (sym or asym, groups, optional g_idx), f16/bf16 activations
};

// Where the tensors come from: a checkpoint directory or a streamed set.
struct TensorSource {
  std::vector<std::string> names;
  std::function<absl::StatusOr<Tensor>(const std::string&)> get;
  // Optional: drops the source's own references once the specs hold what they need, so a
  // streamed set's memory goes as its layers are prepared (and its unused tensors at once).
  std::function<void()> release;
};

struct LinearSpec {
  std::string module;       // "model.layers.0.self_attn.q_proj"
  std::string group;        // config group that quantizes it
  LinearKind kind = LinearKind::kW8A8Dynamic;
  std::string scheme;       // "W8A8", "W8A8_STATIC", "FP8", "FP8_DYNAMIC", "W4A16", "W4A16_ASYM"
  std::string activations;  // in words, e.g. "int8 dynamic per-token"
  int64_t n = 0, k = 0;
  int64_t group_size = 0;   // int4: columns per group (K for per channel); else 0
  bool asymmetric = false;
  bool act_order = false;   // int4 with weight_g_idx
  std::optional<float> input_scale;  // static schemes
  // The checkpoint tensors (views stay valid while the source is alive).
  Tensor weight;                    // I8 [N,K] | F8_E4M3 [N,K] | I32 [N, ceil(K/8)]
  Tensor weight_scale;              // F32/F16/BF16, N, 1 or N*G elements
  std::optional<Tensor> zero_point; // I32 [ceil(N/8), G] (int4 asymmetric)
  std::optional<Tensor> g_idx;      // I32 [K]
  std::vector<float> bias;          // empty, or [N] as f32
  // What the backend will hold for it, estimated before preparing (weight bytes + f32 scales and
  // zero points + g_idx + bias): the memory budget's first check; the real count is
  // PreparedWeight::bytes() once prepared.
  int64_t EstimatedBytes() const;
};

struct CheckpointLinears {
  std::vector<LinearSpec> linears;            // quantized, in name order
  std::vector<std::string> float_linears;     // 2-D *.weight of *_proj / lm_head left in float
};

// A quantized Linear found by its tensors' names, before they are read: its config group and
// scheme.
struct PlannedLinear {
  std::string module, group;
  QuantScheme scheme;
};
struct LinearPlan {
  std::set<std::string> names;             // every tensor of the checkpoint
  std::vector<PlannedLinear> linears;      // in name order
  std::vector<std::string> float_linears;  // 2-D *.weight of *_proj / lm_head left in float
};
// The checks of FindQuantizedLinears that need names only (config, groups, ignore lists), among
// them the completeness of the checkpoint: a Linear with a plain `.weight` that a config group
// targets (not ignored) but without its quantized tensors, a decoder layer config.json's
// num_hidden_layers counts but no `model.layers.<i>.*` tensor has, and (llama / mistral / qwen2)
// a decoder layer without one of its seven projections are INVALID_ARGUMENT naming the missing
// tensor, layer or Linear. Linears the config leaves in float (ignored, or matched by no target,
// e.g. lm_head) are float_linears.
absl::StatusOr<LinearPlan> PlanQuantizedLinears(const nlohmann::json& config, const std::vector<std::string>& names);
// Reads and checks one planned Linear's tensors from `source` (`names`: every tensor of the
// checkpoint, so optional tensors are looked up only when they exist).
absl::StatusOr<LinearSpec> ReadQuantizedLinear(const PlannedLinear& planned, const std::set<std::string>& names,
                                               const TensorSource& source);

// Finds and validates every quantized Linear. `config` is the whole config.json. Errors name the
// module and the problem: INVALID_ARGUMENT for a malformed checkpoint, UNIMPLEMENTED for a
// scheme this runtime does not execute (W8A16, FP8 weight-only, asymmetric int8, block scales,
// quantized activations with int4 weights, ...), FAILED_PRECONDITION for a checkpoint that is not
// compressed / has no quantized Linear.
absl::StatusOr<CheckpointLinears> FindQuantizedLinears(const nlohmann::json& config, const TensorSource& source);

}  // namespace lowbit::runtime

#endif  // LOWBIT_RUNTIME_LINEAR_SPEC_H_
