// Writing compressed-tensors checkpoints: the tensors of one quantized Linear
// (EncodeLinear), and the whole directory (WriteCheckpoint) — config.json with
// quantization_config, safetensors (sharded at a limit), the source model's tokenizer and
// generation files copied through, recipe.yaml and report.json — written into a temp
// directory and renamed into place, so a crash never leaves a half-written checkpoint.
// Format: shared/reference/compressed-tensors-format.md §3–§5.
#ifndef LOWBIT_COMMON_CHECKPOINT_H_
#define LOWBIT_COMMON_CHECKPOINT_H_

#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/numerics.h"
#include "common/quant_args.h"
#include "common/safetensors.h"
#include "nlohmann/json.hpp"

namespace lowbit {

// One Linear after quantization, before it is given its on-disk names.
struct QuantizedLinear {
  std::string module;  // e.g. "model.layers.0.self_attn.q_proj"
  int64_t rows = 0;    // N (out features)
  int64_t cols = 0;    // K (in features)
  QuantArgs weight_args;
  WeightQParams qparams;
  std::vector<int8_t> int_codes;    // int schemes: [N, K] values in [qmin, qmax]
  std::vector<uint8_t> fp8_codes;   // float schemes: [N, K] E4M3 bytes
  std::vector<int32_t> g_idx;       // actorder "group" only: group of each input column
  std::optional<float> input_scale; // static activation scale (FP8 static, static int8)
};

// Round-to-nearest quantization of a [N, K] weight with `args` (memoryless min-max or MSE
// observer as the args say). Scales are rounded to `scale_dtype` before quantizing. The
// division w / scale runs in float32, so every code is the nearest grid point (|w - w'| is at
// most half a step, except where the range end clips). compressed-tensors divides in the
// model dtype at save time, which for bf16 int8 can move a code by one step; the on-disk
// format is the same either way. numerics.h's `compute` argument reproduces its rounding.
absl::StatusOr<QuantizedLinear> QuantizeLinearRtn(const std::string& module, const Tensor& weight,
                                                  const QuantArgs& args, DType scale_dtype);

// The weight dequantized back to float, [N, K].
std::vector<float> DequantizeLinear(const QuantizedLinear& q);

// The tensors compressed-tensors writes for `q` under `format` (int-quantized,
// pack-quantized or float-quantized), scales stored in `scale_dtype`.
absl::StatusOr<std::vector<NamedTensor>> EncodeLinear(const QuantizedLinear& q, const std::string& format,
                                                      DType scale_dtype);

// The scale dtype compressed-tensors uses for a model dtype (the model dtype itself for
// F32/F16/BF16, F16 otherwise).
DType ScaleDTypeFor(DType model_dtype);

struct CheckpointSpec {
  std::string source_dir;  // original model: its config.json is extended, other files copied
  std::string out_dir;
  QuantizationConfig quantization;
  std::vector<NamedTensor> tensors;  // every tensor of the checkpoint
  std::optional<std::string> recipe_yaml;
  std::optional<nlohmann::json> report;
  uint64_t max_shard_bytes = 20ull << 30;  // llm-compressor's default "20GB"
};

absl::Status WriteCheckpoint(const CheckpointSpec& spec);

}  // namespace lowbit

#endif  // LOWBIT_COMMON_CHECKPOINT_H_
