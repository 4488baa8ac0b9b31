// ParseLlamaConfig: a Hugging Face config.json -> LlamaConfig, refusing anything whose forward
// pass we would not compute exactly (llama.h).
#include <cmath>
#include <string>

#include "absl/strings/str_cat.h"
#include "calibrator/llama.h"
#include "common/hf_config.h"

namespace lowbit {
namespace {

using json = nlohmann::json;

constexpr int64_t kMaxDim = int64_t{1} << 24;  // far above any real model; keeps products in range

absl::Status Bad(const std::string& field, const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat("config.json: \"", field, "\" ", why));
}

std::string Show(const json& v) {
  std::string s = v.dump();
  return s.size() > 80 ? s.substr(0, 77) + "..." : s;
}

// An integer field in [lo, kMaxDim]. Missing: `fallback` when given, else an error.
absl::Status GetInt(const json& c, const std::string& key, int64_t lo, int64_t* out,
                    const int64_t* fallback = nullptr) {
  auto it = c.find(key);
  if (it == c.end() || it->is_null()) {
    if (fallback != nullptr) {
      *out = *fallback;
      return absl::OkStatus();
    }
    return Bad(key, "is missing (required for a Llama-family model)");
  }
  if (!it->is_number_integer()) return Bad(key, absl::StrCat("must be an integer, got ", Show(*it)));
  int64_t v = it->get<int64_t>();
  if (v < lo || v > kMaxDim) {
    return Bad(key, absl::StrCat("must be in [", lo, ", ", kMaxDim, "], got ", v));
  }
  *out = v;
  return absl::OkStatus();
}

// A positive finite number field; missing or null keeps *out.
absl::Status GetPositive(const json& c, const std::string& key, double* out, const std::string& where = "") {
  auto it = c.find(key);
  if (it == c.end() || it->is_null()) return absl::OkStatus();
  std::string field = where.empty() ? key : absl::StrCat(where, ".", key);
  if (!it->is_number()) return Bad(field, absl::StrCat("must be a number, got ", Show(*it)));
  double v = it->get<double>();
  if (!std::isfinite(v) || v <= 0) return Bad(field, absl::StrCat("must be a positive number, got ", Show(*it)));
  *out = v;
  return absl::OkStatus();
}

absl::Status GetBool(const json& c, const std::string& key, bool* out) {
  auto it = c.find(key);
  if (it == c.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_boolean()) return Bad(key, absl::StrCat("must be true or false, got ", Show(*it)));
  *out = it->get<bool>();
  return absl::OkStatus();
}

absl::Status ParseRopeScaling(const json& c, RopeScaling* rs) {
  auto it = c.find("rope_scaling");
  if (it == c.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_object()) return Bad("rope_scaling", absl::StrCat("must be an object or null, got ", Show(*it)));
  const json& r = *it;
  // transformers wrote "type" before 4.43 and "rope_type" since; accept either (same value if both).
  std::string type;
  for (const char* key : {"rope_type", "type"}) {
    auto t = r.find(key);
    if (t == r.end() || t->is_null()) continue;
    if (!t->is_string()) return Bad(absl::StrCat("rope_scaling.", key), absl::StrCat("must be a string, got ", Show(*t)));
    std::string v = t->get<std::string>();
    if (!type.empty() && v != type) {
      return Bad("rope_scaling", absl::StrCat("has rope_type \"", type, "\" and type \"", v, "\" that disagree"));
    }
    type = v;
  }
  if (type.empty()) return Bad("rope_scaling", "has neither \"rope_type\" nor \"type\"");
  if (type == "default") return absl::OkStatus();
  if (type != "llama3" && type != "linear") {
    return Bad("rope_scaling.rope_type",
               absl::StrCat("\"", type, "\" is not supported (supported: default, linear, llama3)"));
  }
  rs->type = type;
  if (!r.contains("factor")) return Bad("rope_scaling.factor", absl::StrCat("is required for rope_type ", type));
  if (absl::Status s = GetPositive(r, "factor", &rs->factor, "rope_scaling"); !s.ok()) return s;
  if (type == "llama3") {
    for (const char* key : {"low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}) {
      if (!r.contains(key) || r[key].is_null()) {
        return Bad(absl::StrCat("rope_scaling.", key), "is required for rope_type llama3");
      }
    }
    if (absl::Status s = GetPositive(r, "low_freq_factor", &rs->low_freq_factor, "rope_scaling"); !s.ok()) return s;
    if (absl::Status s = GetPositive(r, "high_freq_factor", &rs->high_freq_factor, "rope_scaling"); !s.ok()) return s;
    if (!(rs->high_freq_factor > rs->low_freq_factor)) {
      return Bad("rope_scaling.high_freq_factor",
                 absl::StrCat("must be larger than low_freq_factor (", rs->low_freq_factor, "), got ",
                              rs->high_freq_factor));
    }
    const json& o = r["original_max_position_embeddings"];
    if (!o.is_number_integer() || o.get<int64_t>() <= 0) {
      return Bad("rope_scaling.original_max_position_embeddings",
                 absl::StrCat("must be a positive integer, got ", Show(o)));
    }
    rs->original_max_position_embeddings = o.get<int64_t>();
  }
  return absl::OkStatus();
}

}  // namespace

bool LlamaConfig::LinearHasBias(std::string_view suffix) const {
  auto ends_with = [&](std::string_view tail) {
    return suffix.size() >= tail.size() && suffix.substr(suffix.size() - tail.size()) == tail;
  };
  if (ends_with("q_proj") || ends_with("k_proj") || ends_with("v_proj")) return attention_bias;
  if (ends_with("o_proj")) return attention_bias && model_type != "qwen2";
  if (ends_with("gate_proj") || ends_with("up_proj") || ends_with("down_proj")) return mlp_bias;
  return false;
}

absl::StatusOr<LlamaConfig> ParseLlamaConfig(const json& c) {
  if (!c.is_object()) return absl::InvalidArgumentError("config.json: the top level must be an object");
  LlamaConfig cfg;

  // Architecture and model_type: both name the same member of the family.
  static constexpr std::pair<const char*, const char*> kFamily[] = {
      {"LlamaForCausalLM", "llama"}, {"MistralForCausalLM", "mistral"}, {"Qwen2ForCausalLM", "qwen2"}};
  auto mt = c.find("model_type");
  if (mt == c.end() || !mt->is_string()) {
    return Bad("model_type", "is missing or not a string (expected llama, mistral or qwen2)");
  }
  cfg.model_type = mt->get<std::string>();
  const char* want_arch = nullptr;
  for (auto [arch, type] : kFamily) {
    if (cfg.model_type == type) want_arch = arch;
  }
  if (want_arch == nullptr) {
    return Bad("model_type", absl::StrCat("\"", cfg.model_type,
                                          "\" is not supported (supported: llama, mistral, qwen2)"));
  }
  auto ar = c.find("architectures");
  if (ar == c.end() || ar->is_null()) {
    cfg.architecture = want_arch;
  } else {
    if (!ar->is_array() || ar->size() != 1 || !(*ar)[0].is_string()) {
      return Bad("architectures", absl::StrCat("must be a list of one architecture name, got ", Show(*ar)));
    }
    cfg.architecture = (*ar)[0].get<std::string>();
    if (cfg.architecture != want_arch) {
      return Bad("architectures", absl::StrCat("[\"", cfg.architecture, "\"] is not supported with model_type \"",
                                               cfg.model_type, "\" (expected ", want_arch, ")"));
    }
  }

  if (absl::Status s = GetInt(c, "hidden_size", 1, &cfg.hidden_size); !s.ok()) return s;
  if (absl::Status s = GetInt(c, "intermediate_size", 1, &cfg.intermediate_size); !s.ok()) return s;
  if (absl::Status s = GetInt(c, "num_hidden_layers", 1, &cfg.num_layers); !s.ok()) return s;
  if (absl::Status s = GetInt(c, "num_attention_heads", 1, &cfg.num_heads); !s.ok()) return s;
  if (absl::Status s = GetInt(c, "num_key_value_heads", 1, &cfg.num_kv_heads, &cfg.num_heads); !s.ok()) return s;
  if (absl::Status s = GetInt(c, "vocab_size", 1, &cfg.vocab_size); !s.ok()) return s;
  if (cfg.num_heads % cfg.num_kv_heads != 0) {
    return Bad("num_key_value_heads", absl::StrCat("(", cfg.num_kv_heads, ") must divide num_attention_heads (",
                                                   cfg.num_heads, ")"));
  }
  auto hd = c.find("head_dim");
  if (hd == c.end() || hd->is_null()) {
    if (cfg.hidden_size % cfg.num_heads != 0) {
      return Bad("hidden_size", absl::StrCat("(", cfg.hidden_size, ") must be divisible by num_attention_heads (",
                                             cfg.num_heads, ") when head_dim is not given"));
    }
    cfg.head_dim = cfg.hidden_size / cfg.num_heads;
  } else if (absl::Status s = GetInt(c, "head_dim", 1, &cfg.head_dim); !s.ok()) {
    return s;
  }
  if (cfg.head_dim % 2 != 0) return Bad("head_dim", absl::StrCat("must be even for RoPE, got ", cfg.head_dim));
  if (cfg.num_heads * cfg.head_dim > kMaxDim) {
    return Bad("num_attention_heads", "times head_dim is implausibly large");
  }

  if (absl::Status s = GetPositive(c, "rms_norm_eps", &cfg.rms_norm_eps); !s.ok()) return s;
  if (absl::Status s = GetPositive(c, "rope_theta", &cfg.rope_theta); !s.ok()) return s;
  if (absl::Status s = ParseRopeScaling(c, &cfg.rope_scaling); !s.ok()) return s;

  for (const char* key : {"hidden_act", "hidden_activation"}) {
    auto act = c.find(key);
    if (act == c.end() || act->is_null()) continue;
    if (!act->is_string() || act->get<std::string>() != "silu") {
      return Bad(key, absl::StrCat("must be \"silu\" (SwiGLU MLP), got ", Show(*act)));
    }
  }
  if (absl::Status s = GetBool(c, "tie_word_embeddings", &cfg.tie_word_embeddings); !s.ok()) return s;

  if (cfg.model_type == "qwen2") {
    // Qwen2 always has q/k/v biases (no o_proj bias) and no attention_bias key.
    cfg.attention_bias = true;
    bool sliding = false;
    if (absl::Status s = GetBool(c, "use_sliding_window", &sliding); !s.ok()) return s;
    if (sliding) {
      return Bad("use_sliding_window",
                 "is true: Qwen2 sliding-window attention is not supported (calibrate with it off, as "
                 "the released Qwen2 checkpoints ship)");
    }
  } else {
    if (absl::Status s = GetBool(c, "attention_bias", &cfg.attention_bias); !s.ok()) return s;
    if (absl::Status s = GetBool(c, "mlp_bias", &cfg.mlp_bias); !s.ok()) return s;
  }
  if (cfg.model_type == "mistral") {
    auto sw = c.find("sliding_window");
    if (sw != c.end() && !sw->is_null()) {
      if (!sw->is_number_integer() || sw->get<int64_t>() < 1) {
        return Bad("sliding_window", absl::StrCat("must be a positive integer or null, got ", Show(*sw)));
      }
      cfg.sliding_window = sw->get<int64_t>();
    }
  } else if (cfg.model_type == "llama") {
    auto sw = c.find("sliding_window");
    if (sw != c.end() && !sw->is_null()) {
      return Bad("sliding_window", absl::StrCat("is ", Show(*sw), ": Llama has no sliding-window attention"));
    }
  }

  absl::StatusOr<std::optional<DType>> dtype = ConfigStorageDType(c);
  if (!dtype.ok()) return dtype.status();
  if (*dtype) cfg.dtype = **dtype;
  return cfg;
}

}  // namespace lowbit
