// Test fixture writer: an FP8 (static per-tensor) checkpoint with an FP8 kv_cache_scheme, so
// the independent checker can verify those formats before the calibration pipeline exists.
// Weights are round-to-nearest FP8; every input_scale, k_scale and v_scale is computed the way
// the calibrator does (static_minmax observer, absmax / 448, rounded to the model dtype) but
// over deterministic synthetic activations rather than the model's own.
//   write_static_fp8_checkpoint MODEL_DIR OUT_DIR
#include <cstdio>
#include <random>
#include <set>

#include "absl/strings/match.h"
#include "calibrator/rtn.h"
#include "common/checkpoint.h"
#include "common/numerics.h"

namespace lowbit {
namespace {

float StaticScale(const QuantArgs& args, std::mt19937& rng, DType dtype) {
  std::normal_distribution<float> n(0.0f, 1.0f);
  ActivationObserver observer;  // static_minmax: running global min / max
  for (int batch = 0; batch < 4; ++batch) {
    std::vector<float> x(256);
    for (float& v : x) v = n(rng) * (1.0f + batch);
    observer.Observe(x);
  }
  return ComputeQParam(args, observer.min(), observer.max(), dtype).scale;
}

int Run(const std::string& model_dir, const std::string& out_dir) {
  auto model = SafetensorsModel::Open(model_dir);
  if (!model.ok()) return std::fprintf(stderr, "%s\n", std::string(model.status().message()).c_str()), 1;
  QuantScheme fp8 = *PresetScheme("FP8", {"Linear"});
  QuantArgs kv = fp8.input_activations.value();  // 8-bit float, tensor, symmetric, static
  std::mt19937 rng(42);
  CheckpointSpec spec;
  spec.source_dir = model_dir;
  spec.out_dir = out_dir;
  spec.quantization = MakeQuantizationConfig({{"group_0", fp8}}, {"lm_head"}, kv);
  std::set<std::string> replaced;
  for (const std::string& module : LinearModules(**model)) {
    if (module == "lm_head") continue;
    Tensor w = *(*model)->Get(module + ".weight");
    DType scale_dtype = ScaleDTypeFor(w.dtype());
    auto q = QuantizeLinearRtn(module, w, *fp8.weights, scale_dtype);
    if (!q.ok()) return std::fprintf(stderr, "%s\n", std::string(q.status().message()).c_str()), 1;
    q->input_scale = StaticScale(*fp8.input_activations, rng, scale_dtype);
    auto tensors = EncodeLinear(*q, "float-quantized", scale_dtype);
    if (!tensors.ok()) return std::fprintf(stderr, "%s\n", std::string(tensors.status().message()).c_str()), 1;
    for (auto& t : *tensors) spec.tensors.push_back(std::move(t));
    replaced.insert(module + ".weight");
    if (absl::EndsWith(module, "self_attn.k_proj") || absl::EndsWith(module, "self_attn.v_proj")) {
      std::string attn = module.substr(0, module.size() - 6);  // "...self_attn"
      std::string which = absl::EndsWith(module, "k_proj") ? "k_scale" : "v_scale";
      spec.tensors.push_back({attn + which, Tensor::FromFloats(std::vector<float>{StaticScale(kv, rng, scale_dtype)},
                                                               {1}, scale_dtype)});
    }
  }
  for (const std::string& name : (*model)->names()) {
    if (!replaced.count(name)) spec.tensors.push_back({name, *(*model)->Get(name)});
  }
  absl::Status s = WriteCheckpoint(spec);
  if (!s.ok()) return std::fprintf(stderr, "%s\n", std::string(s.message()).c_str()), 1;
  return 0;
}

}  // namespace
}  // namespace lowbit

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: write_static_fp8_checkpoint MODEL_DIR OUT_DIR\n");
    return 2;
  }
  return lowbit::Run(argv[1], argv[2]);
}
