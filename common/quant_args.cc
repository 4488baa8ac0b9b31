#include "common/quant_args.h"

#include <algorithm>
#include <cctype>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace lowbit {
namespace {

using nlohmann::json;

constexpr std::pair<Strategy, std::string_view> kStrategies[] = {
    {Strategy::kTensor, "tensor"}, {Strategy::kChannel, "channel"},
    {Strategy::kGroup, "group"},   {Strategy::kBlock, "block"},
    {Strategy::kToken, "token"},   {Strategy::kTensorGroup, "tensor_group"},
    {Strategy::kAttnHead, "attn_head"}};

bool GroupLike(Strategy s) { return s == Strategy::kGroup || s == Strategy::kTensorGroup; }

QuantArgs IntArgs(int bits, Strategy strategy, bool symmetric = true) {
  QuantArgs a;
  a.num_bits = bits;
  a.symmetric = symmetric;
  a.strategy = strategy;
  if (strategy == Strategy::kGroup) a.group_size = 128;
  return a;
}

QuantArgs DynamicTokenArgs(QuantType type) {
  QuantArgs a;
  a.type = type;
  a.strategy = Strategy::kToken;
  a.dynamic = Dynamic::kDynamic;
  return a;
}

QuantArgs Fp8Args(Strategy strategy) {
  QuantArgs a;
  a.type = QuantType::kFloat;
  a.strategy = strategy;
  return a;
}

absl::Status Bad(std::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("invalid quantization args: ", std::string(what)));
}

}  // namespace

std::string_view QuantTypeName(QuantType t) { return t == QuantType::kInt ? "int" : "float"; }

std::string_view StrategyName(Strategy s) {
  for (auto& [v, name] : kStrategies) if (v == s) return name;
  return "?";
}

std::string_view DynamicName(Dynamic d) {
  return d == Dynamic::kStatic ? "false" : d == Dynamic::kDynamic ? "true" : "local";
}

std::optional<QuantType> ParseQuantType(std::string_view s) {
  std::string l = absl::AsciiStrToLower(std::string(s));
  if (l == "int") return QuantType::kInt;
  if (l == "float") return QuantType::kFloat;
  return std::nullopt;
}

std::optional<Strategy> ParseStrategy(std::string_view s) {
  std::string l = absl::AsciiStrToLower(std::string(s));
  for (auto& [v, name] : kStrategies) if (name == l) return v;
  return std::nullopt;
}

std::optional<ActOrder> ParseActOrder(std::string_view s) {
  std::string l = absl::AsciiStrToLower(std::string(s));
  if (l == "weight" || l == "static") return ActOrder::kWeight;
  if (l == "group" || l == "dynamic") return ActOrder::kGroup;
  return std::nullopt;
}

absl::Status NormalizeQuantArgs(QuantArgs& a) {
  if (a.type == QuantType::kInt && (a.num_bits < 2 || a.num_bits > 8)) {
    return Bad(absl::StrCat("num_bits ", a.num_bits, " for int (Lowbit supports 2..8)"));
  }
  if (a.type == QuantType::kFloat) {
    if (a.num_bits != 8) return Bad(absl::StrCat("num_bits ", a.num_bits, " for float (Lowbit supports FP8 E4M3 only)"));
    if (!a.symmetric) return Bad("float quantization must be symmetric");
  }
  if (!a.strategy) {
    if (!a.group_size) a.strategy = Strategy::kTensor;
    else if (*a.group_size > 0) a.strategy = Strategy::kGroup;
    else if (*a.group_size == -1) a.strategy = Strategy::kChannel;
    else return Bad(absl::StrCat("group_size ", *a.group_size, " (use > 0, or -1 for channel)"));
  }
  Strategy s = *a.strategy;
  if (GroupLike(s) && !(a.group_size && *a.group_size > 0)) {
    return Bad(absl::StrCat("strategy ", std::string(StrategyName(s)), " needs group_size > 0"));
  }
  if (!GroupLike(s) && a.group_size && *a.group_size > 0) {
    return Bad(absl::StrCat("group_size ", *a.group_size, " needs strategy group or tensor_group, not ", std::string(StrategyName(s))));
  }
  if (a.group_size && *a.group_size == 0) return Bad("group_size 0 (use > 0, or -1 for channel)");
  if (a.block_structure && ((*a.block_structure)[0] <= 0 || (*a.block_structure)[1] <= 0)) {
    return Bad("block_structure dimensions must be positive");
  }
  if ((s == Strategy::kBlock) != a.block_structure.has_value()) {
    return Bad("strategy block and block_structure go together");
  }
  if (s == Strategy::kToken && a.dynamic != Dynamic::kDynamic) return Bad("strategy token needs dynamic: true");
  if (a.dynamic == Dynamic::kDynamic &&
      !(s == Strategy::kToken || s == Strategy::kTensor || GroupLike(s))) {
    return Bad(absl::StrCat("dynamic: true is not allowed with strategy ", std::string(StrategyName(s))));
  }
  if (a.dynamic == Dynamic::kLocal && s != Strategy::kTensorGroup) return Bad("dynamic: local needs strategy tensor_group");
  if (a.actorder == ActOrder::kGroup && !GroupLike(s)) return Bad("actorder group needs strategy group");
  if (a.actorder != ActOrder::kNone && a.actorder_spelling.empty()) {
    a.actorder_spelling = a.actorder == ActOrder::kGroup ? "group" : "weight";
  }
  if (!a.observer) {
    if (a.dynamic == Dynamic::kLocal) a.observer = "minmax";
    else if (a.dynamic == Dynamic::kStatic) a.observer = "memoryless_minmax";
  }
  return absl::OkStatus();
}

absl::Status ValidateActivationArgs(const QuantArgs& a) {
  Strategy s = a.strategy_or_tensor();
  if (!(s == Strategy::kToken || s == Strategy::kTensor || GroupLike(s) || s == Strategy::kAttnHead)) {
    return Bad(absl::StrCat("input activations cannot use strategy ", std::string(StrategyName(s))));
  }
  if (a.actorder != ActOrder::kNone) return Bad("actorder is not allowed on activations");
  return absl::OkStatus();
}

const std::vector<std::string>& PresetNames() {
  static const auto* names = new std::vector<std::string>{"W8A8", "INT8", "W8A16", "W4A16",
                                                          "W4A16_ASYM", "FP8", "FP8_DYNAMIC"};
  return *names;
}

absl::StatusOr<QuantScheme> PresetScheme(std::string_view name, std::vector<std::string> targets) {
  QuantScheme s;
  s.targets = std::move(targets);
  std::string n = absl::AsciiStrToUpper(std::string(name));
  if (n == "W8A8" || n == "INT8") {
    s.weights = IntArgs(8, Strategy::kChannel);
    s.input_activations = DynamicTokenArgs(QuantType::kInt);
  } else if (n == "W8A16") {
    s.weights = IntArgs(8, Strategy::kGroup);
  } else if (n == "W4A16") {
    s.weights = IntArgs(4, Strategy::kGroup);
  } else if (n == "W4A16_ASYM") {
    s.weights = IntArgs(4, Strategy::kGroup, /*symmetric=*/false);
  } else if (n == "FP8") {
    s.weights = Fp8Args(Strategy::kTensor);
    s.input_activations = Fp8Args(Strategy::kTensor);
    s.input_activations->observer = "static_minmax";
  } else if (n == "FP8_DYNAMIC") {
    s.weights = Fp8Args(Strategy::kChannel);
    s.input_activations = DynamicTokenArgs(QuantType::kFloat);
  } else {
    std::string known;
    for (const auto& p : PresetNames()) absl::StrAppend(&known, known.empty() ? "" : ", ", p);
    return absl::InvalidArgumentError(absl::StrCat("unknown preset scheme '", std::string(name), "' (known: ", known, ")"));
  }
  for (auto* args : {&s.weights, &s.input_activations}) {
    if (args->has_value()) {
      absl::Status st = NormalizeQuantArgs(**args);
      if (!st.ok()) return st;
    }
  }
  s.format = InferFormat(s);
  return s;
}

std::string InferFormat(const QuantScheme& s) {
  if (!s.weights) return "dense";
  const QuantArgs& w = *s.weights;
  const auto& in = s.input_activations;
  if (w.type == QuantType::kInt) {
    if (in && in->type == QuantType::kInt && w.num_bits == 8) return "int-quantized";
    return "pack-quantized";
  }
  return in ? "float-quantized" : "naive-quantized";
}

json QuantArgsToJson(const QuantArgs& a) {
  json j;
  j["num_bits"] = a.num_bits;
  j["type"] = QuantTypeName(a.type);
  j["symmetric"] = a.symmetric;
  j["strategy"] = StrategyName(a.strategy_or_tensor());
  j["group_size"] = a.group_size ? json(*a.group_size) : json(nullptr);
  j["block_structure"] = a.block_structure ? json(*a.block_structure) : json(nullptr);
  if (a.dynamic == Dynamic::kLocal) j["dynamic"] = "local";
  else j["dynamic"] = a.dynamic == Dynamic::kDynamic;
  j["actorder"] = a.actorder_spelling.empty() ? json(nullptr) : json(a.actorder_spelling);
  j["observer"] = a.observer ? json(*a.observer) : json(nullptr);
  j["observer_kwargs"] = a.observer_kwargs;
  return j;
}

absl::StatusOr<QuantArgs> QuantArgsFromJson(const json& j) {
  if (!j.is_object()) return Bad("expected an object");
  QuantArgs a;
  auto field = [&](const char* key) -> const json* {
    auto it = j.find(key);
    return it == j.end() || it->is_null() ? nullptr : &*it;
  };
  // Integers must fit an int: get<int>() would silently wrap 2^32 + 8 to 8.
  auto small_int = [](const json& v) {
    return v.is_number_integer() && v.get<int64_t>() >= -(int64_t{1} << 30) && v.get<int64_t>() <= (int64_t{1} << 30);
  };
  if (auto* v = field("num_bits")) {
    if (!small_int(*v)) return Bad(absl::StrCat("num_bits must be an integer within +-2^30, got ", v->dump()));
    a.num_bits = v->get<int>();
  }
  if (auto* v = field("type")) {
    auto t = v->is_string() ? ParseQuantType(v->get<std::string>()) : std::nullopt;
    if (!t) return Bad(absl::StrCat("type ", v->dump(), " (expected int or float)"));
    a.type = *t;
  }
  if (auto* v = field("symmetric")) {
    if (!v->is_boolean()) return Bad("symmetric must be true or false");
    a.symmetric = v->get<bool>();
  }
  if (auto* v = field("group_size")) {
    if (!small_int(*v)) return Bad(absl::StrCat("group_size must be an integer within +-2^30, got ", v->dump()));
    a.group_size = v->get<int>();
  }
  if (auto* v = field("strategy")) {
    auto s = v->is_string() ? ParseStrategy(v->get<std::string>()) : std::nullopt;
    if (!s) return Bad(absl::StrCat("strategy ", v->dump()));
    a.strategy = *s;
  }
  if (auto* v = field("block_structure")) {
    std::array<int, 2> b{};
    if (v->is_array() && v->size() == 2 && small_int((*v)[0]) && small_int((*v)[1])) {
      b = {(*v)[0].get<int>(), (*v)[1].get<int>()};
    } else if (v->is_string()) {
      std::vector<std::string> parts = absl::StrSplit(v->get<std::string>(), 'x');
      if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &b[0]) || !absl::SimpleAtoi(parts[1], &b[1])) {
        return Bad(absl::StrCat("block_structure ", v->dump()));
      }
    } else {
      return Bad(absl::StrCat("block_structure ", v->dump()));
    }
    a.block_structure = b;
  }
  if (auto* v = field("dynamic")) {
    if (v->is_boolean()) a.dynamic = v->get<bool>() ? Dynamic::kDynamic : Dynamic::kStatic;
    else if (v->is_string() && v->get<std::string>() == "local") a.dynamic = Dynamic::kLocal;
    else return Bad(absl::StrCat("dynamic ", v->dump(), " (expected true, false or \"local\")"));
  }
  if (auto* v = field("actorder")) {
    if (v->is_boolean()) {
      if (v->get<bool>()) { a.actorder = ActOrder::kGroup; a.actorder_spelling = "group"; }
    } else if (v->is_string() && ParseActOrder(v->get<std::string>())) {
      a.actorder = *ParseActOrder(v->get<std::string>());
      a.actorder_spelling = absl::AsciiStrToLower(v->get<std::string>());
    } else {
      return Bad(absl::StrCat("actorder ", v->dump()));
    }
  }
  if (auto* v = field("observer")) {
    if (!v->is_string()) return Bad("observer must be a string");
    a.observer = v->get<std::string>();
  }
  if (auto* v = field("observer_kwargs")) {
    if (!v->is_object()) return Bad("observer_kwargs must be an object");
    a.observer_kwargs = *v;
  }
  absl::Status st = NormalizeQuantArgs(a);
  if (!st.ok()) return st;
  return a;
}

QuantizationConfig MakeQuantizationConfig(std::map<std::string, QuantScheme> groups,
                                          std::vector<std::string> ignore,
                                          std::optional<QuantArgs> kv_cache_scheme) {
  QuantizationConfig c;
  std::set<std::string> formats;
  for (auto& [name, scheme] : groups) {
    if (!scheme.format) scheme.format = InferFormat(scheme);
    formats.insert(*scheme.format);
  }
  c.format = formats.size() == 1 ? *formats.begin() : formats.empty() ? "dense" : "mixed-precision";
  c.config_groups = std::move(groups);
  c.ignore = std::move(ignore);
  c.kv_cache_scheme = std::move(kv_cache_scheme);
  return c;
}

json QuantizationConfigToJson(const QuantizationConfig& c) {
  json groups = json::object();
  for (const auto& [name, s] : c.config_groups) {
    json g;
    g["targets"] = s.targets;
    g["weights"] = s.weights ? QuantArgsToJson(*s.weights) : json(nullptr);
    g["input_activations"] = s.input_activations ? QuantArgsToJson(*s.input_activations) : json(nullptr);
    g["output_activations"] = s.output_activations ? QuantArgsToJson(*s.output_activations) : json(nullptr);
    g["format"] = s.format ? json(*s.format) : json(nullptr);
    groups[name] = std::move(g);
  }
  json j;
  j["quant_method"] = "compressed-tensors";
  j["format"] = c.format;
  j["quantization_status"] = c.quantization_status;
  j["config_groups"] = std::move(groups);
  j["ignore"] = c.ignore;
  j["kv_cache_scheme"] = c.kv_cache_scheme ? QuantArgsToJson(*c.kv_cache_scheme) : json(nullptr);
  j["global_compression_ratio"] = nullptr;
  j["sparsity_config"] = json::object();
  j["transform_config"] = json::object();
  j["version"] = c.version;
  return j;
}

absl::StatusOr<QuantizationConfig> QuantizationConfigFromJson(const json& j) {
  auto bad = [](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat("quantization_config: ", what));
  };
  if (!j.is_object()) return bad("expected an object");
  if (j.value("quant_method", "") != "compressed-tensors") {
    return bad("quant_method must be \"compressed-tensors\"");
  }
  QuantizationConfig c;
  c.format = j.value("format", "");
  c.quantization_status = j.value("quantization_status", "compressed");
  c.version = j.value("version", "");
  auto groups = j.find("config_groups");
  if (groups == j.end() || !groups->is_object()) return bad("config_groups must be an object");
  for (auto& [name, g] : groups->items()) {
    if (!g.is_object()) return bad(absl::StrCat("config group '", name, "' must be an object"));
    QuantScheme s;
    auto t = g.find("targets");
    if (t == g.end() || !t->is_array() || t->empty()) return bad(absl::StrCat("config group '", name, "' needs targets"));
    for (const auto& target : *t) {
      if (!target.is_string()) return bad(absl::StrCat("config group '", name, "' targets must be strings"));
      s.targets.push_back(target.get<std::string>());
    }
    for (auto [key, dst] : {std::pair{"weights", &s.weights},
                            std::pair{"input_activations", &s.input_activations},
                            std::pair{"output_activations", &s.output_activations}}) {
      auto it = g.find(key);
      if (it == g.end() || it->is_null()) continue;
      auto args = QuantArgsFromJson(*it);
      if (!args.ok()) return bad(absl::StrCat(name, ".", key, ": ", args.status().message()));
      *dst = *args;
    }
    if (auto f = g.find("format"); f != g.end() && f->is_string()) s.format = f->get<std::string>();
    c.config_groups[name] = std::move(s);
  }
  if (auto ig = j.find("ignore"); ig != j.end() && !ig->is_null()) {
    if (!ig->is_array()) return bad("ignore must be a list");
    for (const auto& x : *ig) {
      if (!x.is_string()) return bad("ignore entries must be strings");
      c.ignore.push_back(x.get<std::string>());
    }
  }
  if (auto kv = j.find("kv_cache_scheme"); kv != j.end() && !kv->is_null()) {
    auto args = QuantArgsFromJson(*kv);
    if (!args.ok()) return bad(absl::StrCat("kv_cache_scheme: ", args.status().message()));
    c.kv_cache_scheme = *args;
  }
  return c;
}

}  // namespace lowbit
