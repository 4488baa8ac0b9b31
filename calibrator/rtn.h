// Round-to-nearest quantization of a whole model: every Linear that a config group targets
// (and `ignore` does not) is quantized with its group's weight args; everything else is copied.
// This is llm-compressor's QuantizationModifier without calibration data (the datafree
// pipeline). Schemes that need activation statistics — static input scales (FP8) or a
// kv_cache_scheme — are refused here; the calibration pipeline computes those.
#ifndef LOWBIT_CALIBRATOR_RTN_H_
#define LOWBIT_CALIBRATOR_RTN_H_

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/checkpoint.h"
#include "common/quant_args.h"
#include "common/safetensors.h"

namespace lowbit {

// Quantization error of one Linear's weight.
struct LinearError {
  std::string module;
  std::string group;       // config group that quantized it
  double relative = 0.0;   // ||W - W'||_F / ||W||_F
  double max_abs = 0.0;    // max |W - W'|
};

struct RtnResult {
  std::vector<NamedTensor> tensors;  // the whole checkpoint's tensors
  QuantizationConfig config;
  std::vector<LinearError> errors;   // in module order
};

// The Linear modules of a Llama-family checkpoint: 2-D "<module>.weight" tensors whose module
// is a projection ("*_proj") or the LM head.
std::vector<std::string> LinearModules(const SafetensorsModel& model);

// Which config group quantizes a Linear module: its name, or nullopt to leave it in float.
using GroupResolver = std::function<std::optional<std::string>(const std::string& module)>;

// Quantizes every Linear that `resolve` assigns to a group of `config` (whose groups, ignore
// list and formats go into the checkpoint's quantization_config as they are).
absl::StatusOr<RtnResult> QuantizeModelRtn(const SafetensorsModel& model, const QuantizationConfig& config,
                                           const GroupResolver& resolve);

}  // namespace lowbit

#endif  // LOWBIT_CALIBRATOR_RTN_H_
