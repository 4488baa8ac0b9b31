#include "calibrator/smoothquant.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/module_match.h"

namespace lowbit {
namespace {

// The Linears of a decoder layer and the site their input comes from (llama.h's SiteOf,
// restated here so this file does not depend on llama.cc).
struct LinearInfo {
  const char* suffix;
  LinearSite site;
};
constexpr LinearInfo kLinears[] = {
    {"self_attn.q_proj", LinearSite::kAttentionInput}, {"self_attn.k_proj", LinearSite::kAttentionInput},
    {"self_attn.v_proj", LinearSite::kAttentionInput}, {"self_attn.o_proj", LinearSite::kOProjInput},
    {"mlp.gate_proj", LinearSite::kMlpInput},          {"mlp.up_proj", LinearSite::kMlpInput},
    {"mlp.down_proj", LinearSite::kDownProjInput}};

std::optional<LinearSite> NormSite(std::string_view suffix) {
  if (suffix == "input_layernorm") return LinearSite::kAttentionInput;
  if (suffix == "post_attention_layernorm") return LinearSite::kMlpInput;
  return std::nullopt;
}

const LinearInfo* FindLinear(std::string_view suffix) {
  for (const LinearInfo& l : kLinears) {
    if (suffix == l.suffix) return &l;
  }
  return nullptr;
}

LinearWeights* LinearBySuffix(DecoderLayerWeights& w, std::string_view suffix) {
  if (suffix == "self_attn.q_proj") return &w.q_proj;
  if (suffix == "self_attn.k_proj") return &w.k_proj;
  if (suffix == "self_attn.v_proj") return &w.v_proj;
  if (suffix == "self_attn.o_proj") return &w.o_proj;
  if (suffix == "mlp.gate_proj") return &w.gate_proj;
  if (suffix == "mlp.up_proj") return &w.up_proj;
  if (suffix == "mlp.down_proj") return &w.down_proj;
  return nullptr;
}

std::vector<float>* NormBySuffix(DecoderLayerWeights& w, std::string_view suffix) {
  if (suffix == "input_layernorm") return &w.input_layernorm;
  if (suffix == "post_attention_layernorm") return &w.post_attention_layernorm;
  return nullptr;
}

struct LayerModule {
  std::string suffix;
  std::string name;                      // prefix + suffix
  std::vector<std::string> class_store;  // owns the strings class_names views
  bool is_linear = false;
};

std::vector<LayerModule> LayerModules(std::string_view prefix, std::string_view norm_class) {
  std::vector<LayerModule> modules;
  auto add = [&](std::string suffix, std::vector<std::string> classes, bool linear) {
    LayerModule m;
    m.name = absl::StrCat(std::string(prefix), suffix);
    m.suffix = std::move(suffix);
    m.class_store = std::move(classes);
    m.class_store.push_back("Module");
    m.is_linear = linear;
    modules.push_back(std::move(m));
  };
  add("input_layernorm", {std::string(norm_class)}, false);
  add("self_attn", {"LlamaAttention"}, false);
  for (int i = 0; i < 4; ++i) add(kLinears[i].suffix, {"Linear"}, true);
  add("post_attention_layernorm", {std::string(norm_class)}, false);
  add("mlp", {"LlamaMLP"}, false);
  for (int i = 4; i < 7; ++i) add(kLinears[i].suffix, {"Linear"}, true);
  return modules;
}

std::vector<std::string_view> ClassViews(const LayerModule& m) {
  return std::vector<std::string_view>(m.class_store.begin(), m.class_store.end());
}

}  // namespace

absl::Status ChannelRange::Update(const float* x, int64_t rows, int64_t cols) {
  if (rows < 0 || cols <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("ChannelRange::Update: bad shape [", rows, ", ", cols, "]"));
  }
  if (rows == 0) return absl::OkStatus();
  if (rows_seen == 0 && min.empty()) {
    min.assign(cols, std::numeric_limits<float>::infinity());
    max.assign(cols, -std::numeric_limits<float>::infinity());
  } else if (cols != this->cols()) {
    return absl::InvalidArgumentError(absl::StrCat("ChannelRange::Update: activation has ", cols,
                                                   " channels but earlier batches had ", this->cols()));
  }
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = x + r * cols;
    for (int64_t c = 0; c < cols; ++c) {
      float v = row[c];
      // Comparisons with NaN are false, so NaN never enters the range.
      if (v < min[c]) min[c] = v;
      if (v > max[c]) max[c] = v;
    }
  }
  rows_seen += rows;
  return absl::OkStatus();
}

absl::StatusOr<std::vector<float>> SmoothingScales(const ChannelRange& act,
                                                   std::span<const LinearWeights* const> balance,
                                                   double alpha, SmoothingAlgorithm algo) {
  if (act.empty()) {
    return absl::InvalidArgumentError("SmoothQuant: no activations were observed for this smooth layer");
  }
  if (!(alpha >= 0.0 && alpha <= 1.0)) {
    return absl::InvalidArgumentError(absl::StrCat("SmoothQuant: smoothing_strength ", alpha, " is outside [0, 1]"));
  }
  if (balance.empty()) return absl::InvalidArgumentError("SmoothQuant: a mapping needs at least one balance Linear");
  const int64_t cols = act.cols();
  for (size_t b = 0; b < balance.size(); ++b) {
    const LinearWeights* w = balance[b];
    if (w == nullptr) return absl::InvalidArgumentError(absl::StrCat("SmoothQuant: balance Linear ", b, " is null"));
    if (w->in != cols || static_cast<int64_t>(w->weight.size()) != w->out * w->in) {
      return absl::InvalidArgumentError(absl::StrCat("SmoothQuant: balance Linear ", b, " is [", w->out, ", ", w->in,
                                                     "] with ", w->weight.size(), " values but the activation has ",
                                                     cols, " channels"));
    }
  }
  // w_range_j = 2 * max over balance Linears and rows of |W[i, j]|.
  std::vector<double> w_range(cols, 0.0);
  for (const LinearWeights* w : balance) {
    for (int64_t i = 0; i < w->out; ++i) {
      const float* row = w->weight.data() + i * w->in;
      for (int64_t j = 0; j < cols; ++j) w_range[j] = std::max(w_range[j], static_cast<double>(std::fabs(row[j])));
    }
  }
  std::vector<float> s(cols);
  for (int64_t j = 0; j < cols; ++j) {
    double act_range = static_cast<double>(act.max[j]) - static_cast<double>(act.min[j]);
    if (!std::isfinite(act_range) || act_range < 0.0) {
      return absl::InvalidArgumentError(absl::StrCat("SmoothQuant: activation channel ", j, " has range [", act.min[j],
                                                     ", ", act.max[j], "]; only finite activations can be smoothed"));
    }
    double v;
    if (algo == SmoothingAlgorithm::kLogEqualization) {
      v = act_range / std::log2(2.0 + act_range);
    } else {
      double wr = 2.0 * w_range[j];
      v = wr > 0.0 ? std::pow(act_range, alpha) / std::pow(wr, 1.0 - alpha) : act_range;
    }
    s[j] = static_cast<float>(std::max(v, kMinSmoothingScale));
  }
  return s;
}

absl::Status ApplySmoothing(std::span<const float> s, std::vector<float>& norm_weight,
                            std::span<LinearWeights* const> balance) {
  const int64_t cols = static_cast<int64_t>(s.size());
  if (static_cast<int64_t>(norm_weight.size()) != cols) {
    return absl::InvalidArgumentError(absl::StrCat("SmoothQuant: ", cols, " scales for a smooth-layer weight of ",
                                                   norm_weight.size()));
  }
  for (size_t b = 0; b < balance.size(); ++b) {
    const LinearWeights* w = balance[b];
    if (w == nullptr || w->in != cols || static_cast<int64_t>(w->weight.size()) != w->out * w->in) {
      return absl::InvalidArgumentError(absl::StrCat("SmoothQuant: balance Linear ", b, " does not have ", cols,
                                                     " input columns"));
    }
  }
  for (int64_t j = 0; j < cols; ++j) {
    if (!(s[j] > 0.0f) || !std::isfinite(s[j])) {
      return absl::InvalidArgumentError(absl::StrCat("SmoothQuant: scale ", j, " is ", s[j], "; scales must be finite and > 0"));
    }
  }
  for (int64_t j = 0; j < cols; ++j) norm_weight[j] /= s[j];
  for (LinearWeights* w : balance) {
    for (int64_t i = 0; i < w->out; ++i) {
      float* row = w->weight.data() + i * w->in;
      for (int64_t j = 0; j < cols; ++j) row[j] *= s[j];
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<LayerSmoothMapping>> ResolveLayerSmoothMappings(const SmoothQuantPlan& plan,
                                                                           std::string_view layer_prefix,
                                                                           std::string_view norm_class) {
  std::string prefix(layer_prefix);
  if (!prefix.empty() && prefix.back() != '.') prefix.push_back('.');
  const std::vector<LayerModule> modules = LayerModules(prefix, norm_class);
  std::vector<std::vector<std::string_view>> classes;
  for (const LayerModule& m : modules) classes.push_back(ClassViews(m));
  auto ignored = [&](size_t k) { return IsIgnored(plan.ignore, modules[k].name, classes[k]); };
  for (const std::string& ig : plan.ignore) {
    if (absl::Status st = ValidateTarget(ig); !st.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("SmoothQuant ignore: ", st.message()));
    }
  }

  std::vector<LayerSmoothMapping> out;
  for (size_t mi = 0; mi < plan.mappings.size(); ++mi) {
    const SmoothQuantMapping& mapping = plan.mappings[mi];
    const std::string where = absl::StrCat("SmoothQuant mapping ", mi, " ([", absl::StrJoin(mapping.balance_layers, ", "),
                                           "], ", mapping.smooth_layer, ") in layer '", prefix, "'");
    absl::StatusOr<Target> smooth_target = Target::Create(mapping.smooth_layer);
    if (!smooth_target.ok()) return absl::InvalidArgumentError(absl::StrCat(where, ": ", smooth_target.status().message()));
    std::vector<size_t> smooth_hits;
    for (size_t k = 0; k < modules.size(); ++k) {
      if (smooth_target->Matches(modules[k].name, classes[k])) smooth_hits.push_back(k);
    }
    if (smooth_hits.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": smooth layer target '", mapping.smooth_layer,
                                                     "' matches no module of the layer"));
    }
    if (smooth_hits.size() > 1) {
      std::vector<std::string> names;
      for (size_t k : smooth_hits) names.push_back(modules[k].name);
      return absl::InvalidArgumentError(absl::StrCat(where, ": smooth layer target '", mapping.smooth_layer,
                                                     "' matches more than one module (", absl::StrJoin(names, ", "),
                                                     "); it must name exactly one"));
    }
    if (mapping.balance_layers.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": no balance layers"));
    }
    std::vector<bool> balanced(modules.size(), false);
    for (const std::string& bt : mapping.balance_layers) {
      absl::StatusOr<Target> t = Target::Create(bt);
      if (!t.ok()) return absl::InvalidArgumentError(absl::StrCat(where, ": ", t.status().message()));
      bool any = false;
      for (size_t k = 0; k < modules.size(); ++k) {
        if (!t->Matches(modules[k].name, classes[k])) continue;
        if (!modules[k].is_linear) {
          return absl::InvalidArgumentError(absl::StrCat(where, ": balance target '", bt, "' matches ", modules[k].name,
                                                         ", which is not a Linear"));
        }
        balanced[k] = true;
        any = true;
      }
      if (!any) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": balance target '", bt,
                                                       "' matches no Linear of the layer"));
      }
    }
    const size_t smooth_k = smooth_hits[0];
    bool all_ignored = ignored(smooth_k);
    for (size_t k = 0; k < modules.size() && all_ignored; ++k) {
      if (balanced[k] && !ignored(k)) all_ignored = false;
    }
    if (all_ignored) continue;

    const LayerModule& smooth = modules[smooth_k];
    std::optional<LinearSite> site = NormSite(smooth.suffix);
    if (!site) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": smooth layer ", smooth.name,
                                                     " is not a norm feeding Linears Lowbit can smooth (only "
                                                     "input_layernorm and post_attention_layernorm)"));
    }
    LayerSmoothMapping r;
    r.smooth = smooth.suffix;
    r.site = *site;
    r.mapping_index = static_cast<int>(mi);
    std::vector<std::string> missing;
    for (size_t k = 0; k < modules.size(); ++k) {
      if (!modules[k].is_linear) continue;
      const LinearInfo* info = FindLinear(modules[k].suffix);
      if (balanced[k]) {
        if (info->site != *site) {
          return absl::InvalidArgumentError(absl::StrCat(where, ": balance Linear ", modules[k].name,
                                                         " does not read the output of ", smooth.name));
        }
        r.balance.push_back(modules[k].suffix);
      } else if (info->site == *site) {
        missing.push_back(modules[k].name);
      }
    }
    if (!missing.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": ", absl::StrJoin(missing, ", "), " also read(s) ",
                                                     smooth.name, "'s output but is not a balance layer; smoothing "
                                                     "would change the model's output (add it to the mapping)"));
    }
    for (const LayerSmoothMapping& prev : out) {
      if (prev.smooth == r.smooth) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": smooth layer ", smooth.name,
                                                       " is already smoothed by mapping ", prev.mapping_index));
      }
    }
    out.push_back(std::move(r));
  }
  return out;
}

absl::StatusOr<std::vector<float>> SmoothLayer(const LayerSmoothMapping& mapping, const ChannelRange& act,
                                               double alpha, SmoothingAlgorithm algo, DecoderLayerWeights& weights) {
  std::vector<float>* norm = NormBySuffix(weights, mapping.smooth);
  if (norm == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("SmoothQuant: '", mapping.smooth, "' is not a norm of the layer"));
  }
  std::vector<LinearWeights*> balance;
  for (const std::string& b : mapping.balance) {
    LinearWeights* w = LinearBySuffix(weights, b);
    if (w == nullptr) return absl::InvalidArgumentError(absl::StrCat("SmoothQuant: '", b, "' is not a Linear of the layer"));
    balance.push_back(w);
  }
  std::vector<const LinearWeights*> cbalance(balance.begin(), balance.end());
  absl::StatusOr<std::vector<float>> s = SmoothingScales(act, cbalance, alpha, algo);
  if (!s.ok()) return absl::InvalidArgumentError(absl::StrCat(mapping.smooth, ": ", s.status().message()));
  if (absl::Status st = ApplySmoothing(*s, *norm, balance); !st.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(mapping.smooth, ": ", st.message()));
  }
  return s;
}

}  // namespace lowbit
