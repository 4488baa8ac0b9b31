#include "calibrator/rtn.h"

#include <cmath>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace lowbit {

std::vector<std::string> LinearModules(const SafetensorsModel& model) {
  std::vector<std::string> out;
  for (const std::string& name : model.names()) {
    if (!absl::EndsWith(name, ".weight")) continue;
    std::string module = name.substr(0, name.size() - 7);
    const SafetensorsEntry* e = model.Find(name);
    if (e == nullptr || e->shape.size() != 2) continue;
    if (absl::EndsWith(module, "_proj") || module == "lm_head") out.push_back(module);
  }
  return out;
}

absl::StatusOr<RtnResult> QuantizeModelRtn(const SafetensorsModel& model, const QuantizationConfig& config,
                                           const GroupResolver& resolve) {
  if (config.kv_cache_scheme) {
    return absl::FailedPreconditionError(
        "kv_cache_scheme needs K/V statistics from calibration data; round-to-nearest cannot compute k_scale/v_scale");
  }
  for (const auto& [name, scheme] : config.config_groups) {
    if (scheme.input_activations && scheme.input_activations->dynamic == Dynamic::kStatic) {
      return absl::FailedPreconditionError(absl::StrCat(
          "config group '", name, "' has static input activations, whose input_scale needs calibration data; "
          "use a dynamic scheme (e.g. FP8_DYNAMIC) for round-to-nearest"));
    }
    if (!scheme.weights) {
      return absl::InvalidArgumentError(absl::StrCat("config group '", name, "' quantizes no weights"));
    }
  }
  RtnResult result;
  result.config = config;
  std::set<std::string> replaced;  // tensor names the quantized form replaces
  for (const std::string& module : LinearModules(model)) {
    std::optional<std::string> group = resolve(module);
    if (!group) continue;
    auto scheme = config.config_groups.find(*group);
    if (scheme == config.config_groups.end()) {
      return absl::InternalError(absl::StrCat("module ", module, " resolved to unknown group ", *group));
    }
    absl::StatusOr<Tensor> weight = model.Get(module + ".weight");
    if (!weight.ok()) return weight.status();
    const DType scale_dtype = ScaleDTypeFor(weight->dtype());
    absl::StatusOr<QuantizedLinear> q = QuantizeLinearRtn(module, *weight, *scheme->second.weights, scale_dtype);
    if (!q.ok()) return q.status();
    absl::StatusOr<std::vector<NamedTensor>> encoded =
        EncodeLinear(*q, scheme->second.format.value_or(InferFormat(scheme->second)), scale_dtype);
    if (!encoded.ok()) return encoded.status();

    std::vector<float> original = weight->ToFloats(), restored = DequantizeLinear(*q);
    double err2 = 0, ref2 = 0, max_abs = 0;
    for (size_t i = 0; i < original.size(); ++i) {
      double d = static_cast<double>(original[i]) - restored[i];
      err2 += d * d;
      ref2 += static_cast<double>(original[i]) * original[i];
      max_abs = std::max(max_abs, std::fabs(d));
    }
    result.errors.push_back({module, *group, ref2 > 0 ? std::sqrt(err2 / ref2) : std::sqrt(err2), max_abs});
    replaced.insert(module + ".weight");
    for (NamedTensor& t : *encoded) result.tensors.push_back(std::move(t));
  }
  for (const std::string& name : model.names()) {
    if (replaced.count(name)) continue;
    absl::StatusOr<Tensor> t = model.Get(name);
    if (!t.ok()) return t.status();
    result.tensors.push_back({name, *std::move(t)});  // a view into the source map
  }
  return result;
}

}  // namespace lowbit
