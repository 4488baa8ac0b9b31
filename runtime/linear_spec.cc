#include "runtime/linear_spec.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <string_view>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/module_match.h"
#include "common/quant_args.h"

namespace lowbit::runtime {
namespace {

std::string DN(DType d) { return std::string(DTypeName(d)); }

constexpr std::string_view kLinearClasses[] = {"Linear", "Module"};

std::string Dims(const Tensor& t) { return ShapeString(t.shape()); }

absl::Status Bad(const std::string& module, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat("layer ", module, ": ", what));
}
absl::Status Unsupported(const std::string& module, const std::string& what) {
  return absl::UnimplementedError(absl::StrCat("layer ", module, ": ", what));
}

bool IsFloatScale(DType d) { return d == DType::kF32 || d == DType::kF16 || d == DType::kBF16; }

// An optional tensor: nullopt when absent, an error when present but unreadable.
absl::StatusOr<std::optional<Tensor>> Optional(const TensorSource& src, const std::set<std::string>& names,
                                               const std::string& name) {
  if (!names.count(name)) return std::optional<Tensor>();
  absl::StatusOr<Tensor> t = src.get(name);
  if (!t.ok()) return t.status();
  return std::optional<Tensor>(*std::move(t));
}

// INVALID_ARGUMENT for a tensor a quantized Linear needs and the checkpoint lacks: "<tensor> is
// missing; quantization_config group '<group>' targets <module> (<why>)".
absl::Status Missing(const std::string& tensor, const std::string& group, const std::string& module,
                     const std::string& why) {
  return absl::InvalidArgumentError(
      absl::StrCat(tensor, " is missing; quantization_config group '", group, "' targets ", module, " (", why, ")"));
}

absl::StatusOr<Tensor> Required(const TensorSource& src, const std::set<std::string>& names, const std::string& name,
                                const LinearSpec& spec, const std::string& why) {
  if (!names.count(name)) return Missing(name, spec.group, spec.module, why);
  return src.get(name);
}

absl::Status ReadInputScale(const TensorSource& src, const std::set<std::string>& names, LinearSpec& spec) {
  absl::StatusOr<Tensor> t =
      Required(src, names, spec.module + ".input_scale", spec, "a static per-tensor activation scheme needs it");
  if (!t.ok()) return t.status();
  if (!IsFloatScale(t->dtype()) || t->numel() != 1) {
    return Bad(spec.module, absl::StrCat("input_scale must be one float value, got ", DN(t->dtype()), " ", Dims(*t)));
  }
  float s = t->ToFloats()[0];
  if (!std::isfinite(s) || s <= 0.0f || !std::isfinite(1.0f / s))
    return Bad(spec.module, absl::StrCat("input_scale is ", s, "; it must be > 0 with a finite inverse (≥ ≈ 2.9e-39)"));
  spec.input_scale = s;
  return absl::OkStatus();
}

absl::Status CheckScale(const LinearSpec& spec, int64_t expected_cells, bool allow_single) {
  const Tensor& s = spec.weight_scale;
  if (!IsFloatScale(s.dtype())) {
    return Bad(spec.module, absl::StrCat("weight_scale has dtype ", DN(s.dtype()), "; expected F32, F16 or BF16"));
  }
  if (s.numel() == expected_cells || (allow_single && s.numel() == 1)) return absl::OkStatus();
  return Bad(spec.module, absl::StrCat("weight_scale has shape ", Dims(s), " (", s.numel(), " values); expected ",
                                       expected_cells, allow_single ? " or 1" : ""));
}

// The weight [N, K] of `dtype` and its weight_scale ([N] per channel, [1] per tensor) of an
// int8 or FP8 Linear.
absl::Status ReadDenseWeight(const TensorSource& src, const std::set<std::string>& names, DType dtype, const char* what,
                             Strategy ws, LinearSpec& spec) {
  absl::StatusOr<Tensor> t = Required(src, names, spec.module + ".weight", spec, what);
  if (!t.ok()) return t.status();
  spec.weight = *std::move(t);
  if (spec.weight.dtype() != dtype || spec.weight.shape().size() != 2) {
    return Bad(spec.module, absl::StrCat("weight must be ", DN(dtype), " [N, K], got ", DN(spec.weight.dtype()), " ",
                                         Dims(spec.weight)));
  }
  spec.n = spec.weight.dim(0);
  spec.k = spec.weight.dim(1);
  absl::StatusOr<Tensor> scale = Required(src, names, spec.module + ".weight_scale", spec,
                                          ws == Strategy::kChannel ? "per-channel weight scales" : "the weight scale");
  if (!scale.ok()) return scale.status();
  spec.weight_scale = *std::move(scale);
  return CheckScale(spec, ws == Strategy::kChannel ? spec.n : 1, true);
}

// What differs between the int8 and the FP8 Linears in how their activations run: dynamic
// per-token or static per-tensor (input_scale), and the names each case goes by.
struct DenseKinds {
  const char* type;       // "int8" / "FP8", in messages
  const char* act_label;  // "int8" / "fp8", in LinearSpec::activations
  LinearKind dynamic_kind;
  const char* dynamic_scheme;
  LinearKind static_kind;
  const char* static_scheme;
};
constexpr DenseKinds kInt8Kinds{"int8",       "int8", LinearKind::kW8A8Dynamic, "W8A8", LinearKind::kW8A8Static,
                                "W8A8_STATIC"};
constexpr DenseKinds kFp8Kinds{"FP8", "fp8", LinearKind::kFp8Dynamic, "FP8_DYNAMIC", LinearKind::kFp8Static, "FP8"};

absl::Status CheckDenseWeightStrategy(const LinearSpec& spec, Strategy ws, const DenseKinds& k) {
  if (ws == Strategy::kChannel || ws == Strategy::kTensor) return absl::OkStatus();
  return Unsupported(spec.module, absl::StrCat(k.type, " weight strategy '", std::string(StrategyName(ws)),
                                               "' (this runtime runs tensor or channel)"));
}

// Sets spec's kind, scheme and activations from `a` (reading input_scale when static).
absl::Status SetDenseActivations(const TensorSource& src, const std::set<std::string>& names, const QuantArgs& a,
                                 const DenseKinds& k, LinearSpec& spec) {
  Strategy as = a.strategy_or_tensor();
  if (a.dynamic == Dynamic::kDynamic && as == Strategy::kToken) {
    spec.kind = k.dynamic_kind;
    spec.scheme = k.dynamic_scheme;
    spec.activations = absl::StrCat(k.act_label, " dynamic per-token");
    return absl::OkStatus();
  }
  if (a.dynamic == Dynamic::kStatic && as == Strategy::kTensor) {
    spec.kind = k.static_kind;
    spec.scheme = k.static_scheme;
    spec.activations = absl::StrCat(k.act_label, " static per-tensor");
    return ReadInputScale(src, names, spec);
  }
  return Unsupported(spec.module, absl::StrCat(k.type, " activations '", std::string(DynamicName(a.dynamic)), " ",
                                               std::string(StrategyName(as)),
                                               "' (this runtime runs dynamic per-token or static per-tensor)"));
}

absl::Status ReadInt8(const TensorSource& src, const std::set<std::string>& names, const QuantScheme& scheme,
                      LinearSpec& spec) {
  const QuantArgs& w = *scheme.weights;
  if (!names.count(spec.module + ".weight")) {
    if (names.count(spec.module + ".weight_packed")) {
      return Unsupported(spec.module,
                         "int8 weights stored packed (W8A16 pack-quantized) are not executed by this "
                         "runtime; it runs W8A8 (int-quantized) checkpoints");
    }
    return Missing(spec.module + ".weight", spec.group, spec.module, "int8 weights");
  }
  if (!w.symmetric) return Unsupported(spec.module, "asymmetric int8 weights are not executed by this runtime");
  Strategy ws = w.strategy_or_tensor();
  if (absl::Status s = CheckDenseWeightStrategy(spec, ws, kInt8Kinds); !s.ok()) return s;
  if (!scheme.input_activations) {
    return Unsupported(spec.module, "int8 weight-only (W8A16) is not executed by this runtime; use W8A8");
  }
  const QuantArgs& a = *scheme.input_activations;
  if (a.type != QuantType::kInt || a.num_bits != 8 || !a.symmetric) {
    return Unsupported(spec.module, "int8 weights with activations other than symmetric int8");
  }
  if (absl::Status s = SetDenseActivations(src, names, a, kInt8Kinds, spec); !s.ok()) return s;
  return ReadDenseWeight(src, names, DType::kI8, "int8 weights", ws, spec);
}

absl::Status ReadFp8(const TensorSource& src, const std::set<std::string>& names, const QuantScheme& scheme,
                     LinearSpec& spec) {
  Strategy ws = scheme.weights->strategy_or_tensor();
  if (absl::Status s = CheckDenseWeightStrategy(spec, ws, kFp8Kinds); !s.ok()) return s;
  if (!scheme.input_activations) {
    return Unsupported(spec.module, "FP8 weight-only is not executed by this runtime; use FP8 or FP8_DYNAMIC");
  }
  const QuantArgs& a = *scheme.input_activations;
  if (a.type != QuantType::kFloat || a.num_bits != 8) {
    return Unsupported(spec.module, "FP8 weights with activations other than FP8");
  }
  if (absl::Status s = SetDenseActivations(src, names, a, kFp8Kinds, spec); !s.ok()) return s;
  return ReadDenseWeight(src, names, DType::kF8E4M3, "FP8 weights", ws, spec);
}

absl::Status ReadInt4(const TensorSource& src, const std::set<std::string>& names, const QuantScheme& scheme,
                      LinearSpec& spec) {
  const QuantArgs& w = *scheme.weights;
  if (scheme.input_activations) {
    return Unsupported(spec.module, "int4 weights with quantized activations (W4A8) are not executed by this runtime");
  }
  Strategy ws = w.strategy_or_tensor();
  if (ws != Strategy::kChannel && ws != Strategy::kGroup) {
    return Unsupported(spec.module, absl::StrCat("int4 weight strategy '", std::string(StrategyName(ws)),
                                                 "' (this runtime runs group or channel)"));
  }
  absl::StatusOr<Tensor> t = Required(src, names, spec.module + ".weight_packed", spec, "pack-quantized int4 weights");
  if (!t.ok()) return t.status();
  spec.weight = *std::move(t);
  if (spec.weight.dtype() != DType::kI32 || spec.weight.shape().size() != 2) {
    return Bad(spec.module, absl::StrCat("weight_packed must be I32 [N, ceil(K/8)], got ", DN(spec.weight.dtype()), " ",
                                         Dims(spec.weight)));
  }
  spec.n = spec.weight.dim(0);
  spec.k = spec.weight.dim(1) * 8;
  absl::StatusOr<std::optional<Tensor>> shape = Optional(src, names, spec.module + ".weight_shape");
  if (!shape.ok()) return shape.status();
  if (*shape) {
    const Tensor& s = **shape;
    if (s.numel() != 2 || (s.dtype() != DType::kI64 && s.dtype() != DType::kI32)) {
      return Bad(spec.module, absl::StrCat("weight_shape must be 2 integers, got ", DN(s.dtype()), " ", Dims(s)));
    }
    int64_t n = s.dtype() == DType::kI64 ? s.data<int64_t>()[0] : s.data<int32_t>()[0];
    int64_t k = s.dtype() == DType::kI64 ? s.data<int64_t>()[1] : s.data<int32_t>()[1];
    if (n != spec.n || k <= 0 || (k + 7) / 8 != spec.weight.dim(1)) {
      return Bad(spec.module,
                 absl::StrCat("weight_shape [", n, ", ", k, "] does not fit weight_packed ", Dims(spec.weight)));
    }
    spec.k = k;
  }
  if (ws == Strategy::kChannel) {
    spec.group_size = spec.k;
  } else {
    int gs = w.group_size.value_or(0);
    if (gs <= 0) return Bad(spec.module, "group strategy without a positive group_size");
    spec.group_size = gs;
  }
  const int64_t groups = (spec.k + spec.group_size - 1) / spec.group_size;
  absl::StatusOr<Tensor> scale = Required(src, names, spec.module + ".weight_scale", spec, "int4 weight scales");
  if (!scale.ok()) return scale.status();
  spec.weight_scale = *std::move(scale);
  if (absl::Status s = CheckScale(spec, spec.n * groups, false); !s.ok()) return s;
  spec.asymmetric = !w.symmetric;
  if (spec.asymmetric) {
    absl::StatusOr<Tensor> zp =
        Required(src, names, spec.module + ".weight_zero_point", spec, "asymmetric int4 weights");
    if (!zp.ok()) return zp.status();
    if (zp->dtype() != DType::kI32 || zp->numel() != ((spec.n + 7) / 8) * groups) {
      return Bad(spec.module, absl::StrCat("weight_zero_point must be I32 [", (spec.n + 7) / 8, ", ", groups, "], got ",
                                           DN(zp->dtype()), " ", Dims(*zp)));
    }
    spec.zero_point = *std::move(zp);
  }
  absl::StatusOr<std::optional<Tensor>> g = Optional(src, names, spec.module + ".weight_g_idx");
  if (!g.ok()) return g.status();
  if (*g) {
    const Tensor& gi = **g;
    if (gi.dtype() != DType::kI32 || gi.numel() != spec.k) {
      return Bad(spec.module,
                 absl::StrCat("weight_g_idx must be I32 [", spec.k, "], got ", DN(gi.dtype()), " ", Dims(gi)));
    }
    for (int64_t i = 0; i < spec.k; ++i) {
      int32_t v = gi.data<int32_t>()[i];
      if (v < 0 || v >= groups) {
        return Bad(spec.module, absl::StrCat("weight_g_idx[", i, "] = ", v, " is outside [0, ", groups, ")"));
      }
    }
    spec.g_idx = *g;
    spec.act_order = true;
  }
  spec.kind = LinearKind::kW4A16;
  spec.scheme = spec.asymmetric ? "W4A16_ASYM" : "W4A16";
  spec.activations = "none (f16/bf16)";
  return absl::OkStatus();
}

bool IsLinearName(const std::string& module) {
  return absl::EndsWith(module, "_proj") || module == "lm_head" || absl::EndsWith(module, ".lm_head");
}

// The decoder layers of a Hugging Face causal LM: "model.layers.<i>.".
constexpr char kLayersPrefix[] = "model.layers.";

// The Linears every decoder layer of these model types has (transformers' modeling_llama,
// modeling_mistral, modeling_qwen2).
constexpr std::string_view kDenseDecoderTypes[] = {"llama", "mistral", "qwen2"};
constexpr const char* kDenseDecoderLinears[] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                "self_attn.o_proj", "mlp.gate_proj",    "mlp.up_proj",
                                                "mlp.down_proj"};

// A checkpoint that lacks a decoder layer config.json counts (num_hidden_layers), or, for the
// Llama-family model types, one of a decoder layer's Linears, is incomplete (a truncated copy or
// stream): INVALID_ARGUMENT naming what is missing. Checked on names only.
absl::Status CheckDecoderLayers(const nlohmann::json& config, const std::set<std::string>& names) {
  std::map<int64_t, std::set<std::string>> layers;  // index -> module names under it
  for (const std::string& n : names) {
    if (!absl::StartsWith(n, kLayersPrefix)) continue;
    const std::string_view rest = std::string_view(n).substr(sizeof(kLayersPrefix) - 1);
    const size_t dot = rest.find('.');
    if (dot == 0 || dot == std::string_view::npos) continue;
    int64_t index = 0;
    bool digits = dot <= 9;
    for (size_t i = 0; i < dot && digits; ++i) {
      digits = rest[i] >= '0' && rest[i] <= '9';
      index = index * 10 + (rest[i] - '0');
    }
    if (!digits) continue;
    layers[index].insert(std::string(n));
  }
  if (layers.empty()) return absl::OkStatus();  // not laid out as model.layers.<i>: nothing to check
  auto count = config.find("num_hidden_layers");
  if (count != config.end() && count->is_number_integer() && count->get<int64_t>() > 0) {
    const int64_t want = count->get<int64_t>();
    std::vector<int64_t> absent;
    for (int64_t i = 0; i < want; ++i) {
      if (!layers.count(i)) absent.push_back(i);
    }
    if (!absent.empty()) {
      std::string list;
      for (size_t i = 0; i < absent.size() && i < 8; ++i) absl::StrAppend(&list, i ? ", " : "", absent[i]);
      if (absent.size() > 8) absl::StrAppend(&list, ", ... (", absent.size(), " in all)");
      return absl::InvalidArgumentError(
          absl::StrCat("the checkpoint is incomplete: config.json has num_hidden_layers = ", want, " but there are no ",
                       kLayersPrefix, absent.front(), ".* tensors (decoder layer", absent.size() > 1 ? "s " : " ", list,
                       " missing)"));
    }
  }
  auto type = config.find("model_type");
  if (type == config.end() || !type->is_string()) return absl::OkStatus();
  const std::string model_type = type->get<std::string>();
  if (std::find(std::begin(kDenseDecoderTypes), std::end(kDenseDecoderTypes), model_type) ==
      std::end(kDenseDecoderTypes)) {
    return absl::OkStatus();
  }
  for (const auto& [index, tensors] : layers) {
    for (const char* linear : kDenseDecoderLinears) {
      // Any of the tensors a weight is stored as: one that lost only some of them (a .weight
      // without its scale, a scale without its weight) is named by the Linear's own checks.
      const std::string module = absl::StrCat(kLayersPrefix, index, ".", linear);
      if (tensors.count(module + ".weight") || tensors.count(module + ".weight_packed") ||
          tensors.count(module + ".weight_scale")) {
        continue;
      }
      return absl::InvalidArgumentError(
          absl::StrCat("the checkpoint is incomplete: the Linear ", module, " is missing (no ", module,
                       ".weight); every decoder layer of a ", model_type,
                       " model has self_attn.{q,k,v,o}_proj and mlp.{gate,up,down}_proj"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

int64_t LinearSpec::EstimatedBytes() const {
  int64_t bytes =
      static_cast<int64_t>(weight.nbytes()) + 8 * weight_scale.numel() + 4 * static_cast<int64_t>(bias.size());
  if (kind == LinearKind::kW8A8Dynamic || kind == LinearKind::kW8A8Static) bytes += 4 * n;  // column sums
  if (g_idx) bytes += 4 * g_idx->numel();
  return bytes;
}

absl::StatusOr<LinearPlan> PlanQuantizedLinears(const nlohmann::json& config, const std::vector<std::string>& names) {
  if (!config.is_object()) return absl::InvalidArgumentError("config.json: expected a JSON object");
  auto qc = config.find("quantization_config");
  if (qc == config.end() || qc->is_null()) {
    return absl::FailedPreconditionError(
        "config.json has no quantization_config: not a compressed-tensors checkpoint (quantize it first)");
  }
  absl::StatusOr<QuantizationConfig> parsed = QuantizationConfigFromJson(*qc);
  if (!parsed.ok()) return absl::InvalidArgumentError(absl::StrCat("config.json: ", parsed.status().message()));
  if (parsed->quantization_status != "compressed") {
    return absl::FailedPreconditionError(absl::StrCat("quantization_status is '", parsed->quantization_status,
                                                      "'; the runtime loads compressed checkpoints only"));
  }
  absl::StatusOr<SchemeResolver> resolver = SchemeResolver::Create(parsed->config_groups, parsed->ignore);
  if (!resolver.ok()) return absl::InvalidArgumentError(absl::StrCat("config.json: ", resolver.status().message()));

  LinearPlan plan;
  plan.names = std::set<std::string>(names.begin(), names.end());
  std::set<std::string> modules;
  for (const std::string& n : plan.names) {
    for (const std::string suffix : {".weight_scale", ".weight_packed"}) {
      if (absl::EndsWith(n, suffix)) modules.insert(n.substr(0, n.size() - suffix.size()));
    }
  }
  if (absl::Status s = CheckDecoderLayers(config, plan.names); !s.ok()) return s;
  for (const std::string& n : plan.names) {
    if (!absl::EndsWith(n, ".weight")) continue;
    std::string module = n.substr(0, n.size() - 7);
    if (modules.count(module) || !IsLinearName(module)) continue;
    // A Linear with a plain .weight and no quantized tensors is left in float only when the
    // config quantizes it not (ignored, or matched by no target); one a config group targets lost
    // its scale (a truncated copy or stream).
    if (std::optional<std::string> group = resolver->Resolve(module, kLinearClasses)) {
      const QuantScheme& scheme = parsed->config_groups.at(*group);
      if (scheme.weights) {
        const bool int4 = scheme.weights->type == QuantType::kInt && scheme.weights->num_bits == 4;
        if (int4) {
          return absl::InvalidArgumentError(absl::StrCat(
              module, ".weight_packed and ", module, ".weight_scale are missing; quantization_config group '", *group,
              "' targets ", module, " (int4, pack-quantized), but the checkpoint has only its float ", n));
        }
        return Missing(module + ".weight_scale", *group, module,
                       absl::StrCat(scheme.weights->num_bits, "-bit ", std::string(QuantTypeName(scheme.weights->type)),
                                    " weights need their scales; without them ", n, " cannot be read"));
      }
    }
    plan.float_linears.push_back(module);
  }
  for (const std::string& module : modules) {
    std::optional<std::string> group = resolver->Resolve(module, kLinearClasses);
    if (!group) {
      return absl::InvalidArgumentError(
          absl::StrCat("layer ", module,
                       " has quantized tensors but quantization_config gives it no config group (ignored or "
                       "matched by no target)"));
    }
    const QuantScheme& scheme = parsed->config_groups.at(*group);
    if (!scheme.weights) {
      return absl::InvalidArgumentError(
          absl::StrCat("layer ", module, ": config group '", *group, "' quantizes no weights"));
    }
    plan.linears.push_back({module, *group, scheme});
  }
  if (plan.linears.empty()) {
    return absl::FailedPreconditionError("the checkpoint has no quantized Linear (no *.weight_scale tensors)");
  }
  return plan;
}

absl::StatusOr<LinearSpec> ReadQuantizedLinear(const PlannedLinear& planned, const std::set<std::string>& names,
                                               const TensorSource& source) {
  const std::string& module = planned.module;
  const QuantScheme& scheme = planned.scheme;
  LinearSpec spec;
  spec.module = module;
  spec.group = planned.group;
  const QuantArgs& w = *scheme.weights;
  absl::Status st;
  if (w.type == QuantType::kInt && w.num_bits == 8) {
    st = ReadInt8(source, names, scheme, spec);
  } else if (w.type == QuantType::kInt && w.num_bits == 4) {
    st = ReadInt4(source, names, scheme, spec);
  } else if (w.type == QuantType::kFloat && w.num_bits == 8) {
    st = ReadFp8(source, names, scheme, spec);
  } else {
    st = Unsupported(module, absl::StrCat(w.num_bits, "-bit ", std::string(QuantTypeName(w.type)),
                                          " weights (this runtime runs int8, int4 and FP8 E4M3)"));
  }
  if (!st.ok()) return st;
  if (spec.n <= 0 || spec.k <= 0) return Bad(module, "empty weight");
  absl::StatusOr<std::optional<Tensor>> bias = Optional(source, names, module + ".bias");
  if (!bias.ok()) return bias.status();
  if (*bias) {
    if (!IsFloat((*bias)->dtype()) || (*bias)->numel() != spec.n) {
      return Bad(module,
                 absl::StrCat("bias must be float [", spec.n, "], got ", DN((*bias)->dtype()), " ", Dims(**bias)));
    }
    spec.bias = (*bias)->ToFloats();
  }
  return spec;
}

absl::StatusOr<CheckpointLinears> FindQuantizedLinears(const nlohmann::json& config, const TensorSource& source) {
  absl::StatusOr<LinearPlan> plan = PlanQuantizedLinears(config, source.names);
  if (!plan.ok()) return plan.status();
  CheckpointLinears out;
  out.float_linears = plan->float_linears;
  for (const PlannedLinear& p : plan->linears) {
    absl::StatusOr<LinearSpec> spec = ReadQuantizedLinear(p, plan->names, source);
    if (!spec.ok()) return spec.status();
    out.linears.push_back(*std::move(spec));
  }
  return out;
}

}  // namespace lowbit::runtime
