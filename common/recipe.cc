#include "common/recipe.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <exception>
#include <set>
#include <span>
#include <sstream>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/module_match.h"
#include "yaml-cpp/eventhandler.h"
#include "yaml-cpp/yaml.h"

// File-local status plumbing (Abseil 20220623 exports no such macros).
#define LB_CONCAT_INNER_(a, b) a##b
#define LB_CONCAT_(a, b) LB_CONCAT_INNER_(a, b)
#define LB_RETURN_IF_ERROR(expr)                                   \
  do {                                                             \
    if (absl::Status lb_st_ = (expr); !lb_st_.ok()) return lb_st_; \
  } while (0)
#define LB_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                              \
  if (!tmp.ok()) return tmp.status();             \
  lhs = *std::move(tmp)
#define LB_ASSIGN_OR_RETURN(lhs, expr) LB_ASSIGN_OR_RETURN_IMPL_(LB_CONCAT_(lb_sor_, __LINE__), lhs, expr)

namespace lowbit {
namespace {

using nlohmann::json;

// Debian's Abseil has its own string_view type: Cat() is StrCat taking std::string_view too.
absl::string_view Arg(std::string_view s) { return {s.data(), s.size()}; }
template <typename T>
const T& Arg(const T& v) {
  return v;
}
template <typename... Args>
std::string Cat(const Args&... args) {
  return absl::StrCat(Arg(args)...);
}
std::string_view SV(absl::string_view s) { return {s.data(), s.size()}; }

constexpr std::string_view kSmoothQuant = "SmoothQuantModifier";
constexpr std::string_view kGptq = "GPTQModifier";
constexpr std::string_view kRtn = "QuantizationModifier";

// Observers Lowbit implements (common/numerics.h); llm-compressor has a few more.
constexpr std::string_view kObservers[] = {"memoryless_minmax", "minmax", "static_minmax", "mse",
                                           "memoryless_mse"};
// Removed from llm-compressor but present in older recipe files (algorithms doc §7.1), and
// update_size, which the product doc's W4A16 recipe still passes (GPTQ dropped it in 0.4).
constexpr std::string_view kDeprecatedKeys[] = {"sequential_update", "sequential_targets", "run_type",
                                                "update_size"};
// compressed-tensors' QuantizationArgs fields.
constexpr std::string_view kQuantArgsKeys[] = {
    "num_bits", "type",     "symmetric",   "group_size", "strategy", "block_structure",
    "dynamic",  "actorder", "scale_dtype", "zp_dtype",   "observer", "observer_kwargs"};
// The formats Lowbit's checkpoint writer knows (compressed-tensors CompressionFormat values).
constexpr std::string_view kFormats[] = {"dense", "int-quantized", "pack-quantized", "float-quantized",
                                         "naive-quantized"};

bool In(std::span<const std::string_view> set, std::string_view s) {
  return std::find(set.begin(), set.end(), s) != set.end();
}
std::string JoinNames(std::span<const std::string_view> set) {
  std::string out;
  for (std::string_view s : set) out += Cat(out.empty() ? "" : ", ", s);
  return out;
}

// Guards the YAML -> JSON conversion of free-form values (observer_kwargs) against deep
// nesting and alias bombs ("&a [*a, *a]" repeated doubles the tree each time).
constexpr int kMaxDepth = 32;
constexpr int kMaxNodes = 10000;

// A mapping entry, with the key's line (1-based; 0 = unknown) for diagnostics.
struct Entry {
  std::string key;
  int line = 0;
  YAML::Node value;
};

// A scalar resolved as PyYAML (YAML 1.1, which llm-compressor uses) would: plain `yes`
// is true and `~` is null; quoted text is always a string.
struct Scalar {
  enum Kind { kNull, kBool, kInt, kFloat, kString } kind = kNull;
  bool b = false;
  int64_t i = 0;
  double d = 0;
  std::string s;
};

std::string_view KindName(Scalar::Kind k) {
  switch (k) {
    case Scalar::kNull:
      return "null";
    case Scalar::kBool:
      return "boolean";
    case Scalar::kInt:
      return "integer";
    case Scalar::kFloat:
      return "number";
    case Scalar::kString:
      return "string";
  }
  return "?";
}

// weight_observer / observer.weights -> weights, input... -> input, output... -> output.
std::optional<std::string>& OverrideSlot(ObserverOverrides& o, std::string_view key) {
  if (key.starts_with("weight")) return o.weights;
  if (key.starts_with("input")) return o.input;
  return o.output;
}

// nullopt: an integer that does not fit in 64 bits.
std::optional<Scalar> ResolvePlain(const std::string& t) {
  Scalar v;
  if (t.empty() || t == "~" || t == "null" || t == "Null" || t == "NULL") return v;
  constexpr std::string_view kTrue[] = {"true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON"};
  constexpr std::string_view kFalse[] = {"false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF"};
  if (In(kTrue, t) || In(kFalse, t)) {
    v.kind = Scalar::kBool;
    v.b = In(kTrue, t);
    return v;
  }
  std::string n = t;
  std::erase(n, '_');  // YAML 1.1 digit separators
  size_t body = !n.empty() && (n[0] == '+' || n[0] == '-') ? 1 : 0;
  if (body < n.size() && n.find_first_not_of("0123456789", body) == std::string::npos) {
    v.kind = Scalar::kInt;
    if (!absl::SimpleAtoi(n, &v.i)) return std::nullopt;
    return v;
  }
  bool looks_float = body < n.size() && n.find_first_not_of("0123456789.eE+-", body) == std::string::npos &&
                     n.find_first_of("0123456789") != std::string::npos;
  if (looks_float && absl::SimpleAtod(n, &v.d)) {
    v.kind = Scalar::kFloat;
    return v;
  }
  std::string l = absl::AsciiStrToLower(t);
  if (l == ".inf" || l == "+.inf" || l == "-.inf" || l == ".nan") {
    v.kind = Scalar::kFloat;
    v.d = l == ".nan" ? NAN : (l[0] == '-' ? -INFINITY : INFINITY);
    return v;
  }
  v.kind = Scalar::kString;
  v.s = t;
  return v;
}

class Parser {
 public:
  Parser(std::string_view source, std::vector<std::string>* warnings)
      : source_(source), warnings_(warnings) {}

  absl::StatusOr<RecipePlan> Run(const YAML::Node& root);

 private:
  // ---- diagnostics: "<source>:<line>: <path>: <what>"
  static int LineOf(const YAML::Node& n) {
    YAML::Mark m = n.Mark();
    return m.line < 0 ? 0 : m.line + 1;
  }
  std::string Where(int line, std::string_view path) const {
    std::string s = line > 0 ? Cat(source_, ":", line, ": ") : Cat(source_, ": ");
    if (!path.empty()) s += Cat(path, ": ");
    return s;
  }
  absl::Status Fail(int line, std::string_view path, std::string_view what) const {
    return absl::InvalidArgumentError(Cat(Where(line, path), what));
  }
  void Warn(int line, std::string_view path, std::string_view what) {
    warnings_->push_back(Cat(Where(line, path), what));
  }
  static std::string Join(std::string_view path, std::string_view key) {
    return path.empty() ? std::string(key) : Cat(path, ".", key);
  }

  // ---- typed readers
  absl::StatusOr<std::vector<Entry>> Entries(const YAML::Node& map, int line, std::string_view path);
  absl::StatusOr<Scalar> ReadScalar(const YAML::Node& n, int line, std::string_view path);
  absl::StatusOr<Scalar> ReadScalar(const Entry& e, std::string_view path) {
    return ReadScalar(e.value, e.line, Join(path, e.key));
  }
  absl::Status TypeError(int line, std::string_view path, std::string_view want, const YAML::Node& got);
  absl::StatusOr<std::optional<std::string>> String(const Entry& e, std::string_view path, bool allow_null);
  absl::StatusOr<std::optional<double>> Number(const Entry& e, std::string_view path, bool allow_null);
  absl::StatusOr<std::optional<int64_t>> Int(const Entry& e, std::string_view path, bool allow_null);
  absl::StatusOr<bool> Bool(const Entry& e, std::string_view path);
  // A list of target strings (each validated); `allow_single` also takes one bare string.
  absl::StatusOr<std::vector<std::string>> Targets(const YAML::Node& n, int line, std::string_view path,
                                                   bool allow_single);
  absl::StatusOr<json> ToJson(const YAML::Node& n, int line, std::string_view path, int depth, int* budget);

  // ---- recipe pieces
  absl::Status CommonKey(const Entry& e, std::string_view modifier, bool* handled);
  absl::Status Stage(const Entry& stage, RecipePlan& plan);
  absl::Status Modifier(const Entry& m, RecipePlan& plan);
  absl::StatusOr<SmoothQuantPlan> SmoothQuant(const std::vector<Entry>& entries, int line);
  absl::StatusOr<QuantizationPlan> Quantization(std::string_view name, const std::vector<Entry>& entries,
                                                int line);
  absl::StatusOr<QuantArgs> Args(const Entry& e, std::string_view path);
  absl::StatusOr<QuantScheme> Scheme(const Entry& e, std::string_view path);
  absl::Status CheckKvCache(const Entry& e, std::string_view modifier, const QuantArgs& kv);

  std::string source_;
  std::vector<std::string>* warnings_;
  int smoothquant_line_ = 0;
  int quantization_line_ = 0;
  std::string quantization_name_;
};

absl::StatusOr<std::vector<Entry>> Parser::Entries(const YAML::Node& map, int line, std::string_view path) {
  if (map.IsNull()) return std::vector<Entry>{};
  if (!map.IsMap()) return TypeError(line, path, "a mapping", map);
  std::vector<Entry> out;
  std::set<std::string, std::less<>> seen;
  // yaml-cpp's map iterator yields a temporary (key, value) pair: copy the nodes out of it
  // (they are handles) rather than binding references into it.
  for (const auto& kv : map) {
    YAML::Node k = kv.first;
    int kline = LineOf(k) > 0 ? LineOf(k) : line;
    if (!k.IsScalar()) return Fail(kline, path, "a mapping key must be a plain string");
    Entry e{k.Scalar(), kline, kv.second};
    // PyYAML keeps the last of two equal keys; a silent override hides mistakes.
    if (!seen.insert(e.key).second) return Fail(e.line, path, Cat("duplicate key '", e.key, "'"));
    out.push_back(std::move(e));
  }
  return out;
}

absl::StatusOr<Scalar> Parser::ReadScalar(const YAML::Node& n, int line, std::string_view path) {
  if (n.IsNull()) return Scalar{};
  if (!n.IsScalar()) return TypeError(line, path, "a scalar", n);
  const std::string& tag = n.Tag();
  const std::string& text = n.Scalar();
  if (tag == "!" || tag == "tag:yaml.org,2002:str") return Scalar{Scalar::kString, false, 0, 0, text};
  if (tag != "?" && !tag.empty() && tag != "tag:yaml.org,2002:int" && tag != "tag:yaml.org,2002:float" &&
      tag != "tag:yaml.org,2002:bool" && tag != "tag:yaml.org,2002:null") {
    return Fail(line, path, Cat("unsupported YAML tag '", tag, "'"));
  }
  std::optional<Scalar> v = ResolvePlain(text);
  if (!v) return Fail(line, path, Cat("integer '", text, "' is out of range"));
  return *v;
}

absl::Status Parser::TypeError(int line, std::string_view path, std::string_view want,
                               const YAML::Node& got) {
  std::string desc;
  if (got.IsMap())
    desc = "a mapping";
  else if (got.IsSequence())
    desc = "a list";
  else if (got.IsNull())
    desc = "null";
  else {
    std::optional<Scalar> s = ResolvePlain(got.Scalar());
    bool quoted = got.Tag() == "!";
    desc =
        quoted || !s ? Cat("string '", got.Scalar(), "'") : Cat(KindName(s->kind), " '", got.Scalar(), "'");
  }
  return Fail(line, path, Cat("expected ", want, ", got ", desc));
}

absl::StatusOr<std::optional<std::string>> Parser::String(const Entry& e, std::string_view path,
                                                          bool allow_null) {
  std::string p = Join(path, e.key);
  LB_ASSIGN_OR_RETURN(Scalar v, ReadScalar(e, path));
  if (v.kind == Scalar::kNull && allow_null) return std::optional<std::string>();
  if (v.kind != Scalar::kString) return TypeError(e.line, p, "a string", e.value);
  return std::optional<std::string>(v.s);
}

absl::StatusOr<std::optional<double>> Parser::Number(const Entry& e, std::string_view path, bool allow_null) {
  std::string p = Join(path, e.key);
  LB_ASSIGN_OR_RETURN(Scalar v, ReadScalar(e, path));
  if (v.kind == Scalar::kNull && allow_null) return std::optional<double>();
  if (v.kind == Scalar::kInt) return std::optional<double>(static_cast<double>(v.i));
  if (v.kind != Scalar::kFloat) return TypeError(e.line, p, "a number", e.value);
  if (!std::isfinite(v.d)) return Fail(e.line, p, "must be finite");
  return std::optional<double>(v.d);
}

absl::StatusOr<std::optional<int64_t>> Parser::Int(const Entry& e, std::string_view path, bool allow_null) {
  std::string p = Join(path, e.key);
  LB_ASSIGN_OR_RETURN(Scalar v, ReadScalar(e, path));
  if (v.kind == Scalar::kNull && allow_null) return std::optional<int64_t>();
  if (v.kind != Scalar::kInt) return TypeError(e.line, p, "an integer", e.value);
  return std::optional<int64_t>(v.i);
}

absl::StatusOr<bool> Parser::Bool(const Entry& e, std::string_view path) {
  LB_ASSIGN_OR_RETURN(Scalar v, ReadScalar(e, path));
  if (v.kind != Scalar::kBool) return TypeError(e.line, Join(path, e.key), "true or false", e.value);
  return v.b;
}

absl::StatusOr<std::vector<std::string>> Parser::Targets(const YAML::Node& n, int line, std::string_view path,
                                                         bool allow_single) {
  std::vector<std::pair<YAML::Node, int>> items;
  if (n.IsSequence()) {
    for (const YAML::Node& x : n) items.emplace_back(x, LineOf(x) > 0 ? LineOf(x) : line);
  } else if (allow_single && n.IsScalar()) {
    items.emplace_back(n, line);
  } else {
    return TypeError(line, path, allow_single ? "a string or a list of strings" : "a list of strings", n);
  }
  std::vector<std::string> out;
  for (const auto& [x, xline] : items) {
    LB_ASSIGN_OR_RETURN(Scalar v, ReadScalar(x, xline, path));
    if (v.kind != Scalar::kString) return TypeError(xline, path, "a string", x);
    if (absl::Status st = ValidateTarget(v.s); !st.ok()) return Fail(xline, path, SV(st.message()));
    out.push_back(std::move(v.s));
  }
  return out;
}

absl::StatusOr<json> Parser::ToJson(const YAML::Node& n, int line, std::string_view path, int depth,
                                    int* budget) {
  if (depth > kMaxDepth) return Fail(line, path, Cat("nested deeper than ", kMaxDepth, " levels"));
  if (--*budget < 0) return Fail(line, path, Cat("more than ", kMaxNodes, " values"));
  int here = LineOf(n) > 0 ? LineOf(n) : line;
  if (n.IsSequence()) {
    json a = json::array();
    for (const YAML::Node& x : n) {
      LB_ASSIGN_OR_RETURN(json v, ToJson(x, here, path, depth + 1, budget));
      a.push_back(std::move(v));
    }
    return a;
  }
  if (n.IsMap()) {
    LB_ASSIGN_OR_RETURN(std::vector<Entry> entries, Entries(n, here, path));
    json o = json::object();
    for (const Entry& e : entries) {
      LB_ASSIGN_OR_RETURN(json v, ToJson(e.value, e.line, Join(path, e.key), depth + 1, budget));
      o[e.key] = std::move(v);
    }
    return o;
  }
  LB_ASSIGN_OR_RETURN(Scalar v, ReadScalar(n, here, path));
  switch (v.kind) {
    case Scalar::kNull:
      return json(nullptr);
    case Scalar::kBool:
      return json(v.b);
    case Scalar::kInt:
      // QuantArgsFromJson reads ints as int: keep a huge value from wrapping to a valid one.
      if (v.i < INT32_MIN || v.i > INT32_MAX)
        return Fail(here, path, Cat("integer ", v.i, " is out of range"));
      return json(v.i);
    case Scalar::kFloat:
      return json(v.d);
    case Scalar::kString:
      return json(v.s);
  }
  return json(nullptr);
}

// index / group / start / end / update (every modifier), requires_calibration_data (a field
// llm-compressor writes into the recipe it saves), and the deprecated keys.
absl::Status Parser::CommonKey(const Entry& e, std::string_view modifier, bool* handled) {
  *handled = true;
  if (e.key == "index") return Int(e, modifier, /*allow_null=*/true).status();
  if (e.key == "group") return String(e, modifier, /*allow_null=*/true).status();
  if (e.key == "start" || e.key == "end" || e.key == "update") return Number(e, modifier, true).status();
  if (e.key == "requires_calibration_data") return Bool(e, modifier).status();
  if (In(kDeprecatedKeys, e.key)) {
    Warn(e.line, modifier, Cat("'", e.key, "' is no longer an llm-compressor key; dropped"));
    return absl::OkStatus();
  }
  *handled = false;
  return absl::OkStatus();
}

absl::StatusOr<QuantArgs> Parser::Args(const Entry& e, std::string_view parent) {
  std::string path = Join(parent, e.key);
  LB_ASSIGN_OR_RETURN(std::vector<Entry> entries, Entries(e.value, e.line, path));
  json j = json::object();
  std::map<std::string, int, std::less<>> key_lines;
  const Entry* zp_dtype = nullptr;
  int budget = kMaxNodes;
  for (const Entry& a : entries) {
    // compressed-tensors' QuantizationArgs is extra="forbid" (config.json readers are lenient).
    if (!In(kQuantArgsKeys, a.key)) return Fail(a.line, path, Cat("unknown key '", a.key, "'"));
    key_lines[a.key] = a.line;
    if (a.key == "scale_dtype") {
      LB_ASSIGN_OR_RETURN(Scalar v, ReadScalar(a, path));
      if (v.kind != Scalar::kNull) {
        return Fail(a.line, Join(path, a.key),
                    "not supported by Lowbit (scales are kept in the model's dtype)");
      }
      continue;
    }
    if (a.key == "zp_dtype") {  // checked once the type is known
      zp_dtype = &a;
      continue;
    }
    LB_ASSIGN_OR_RETURN(j[a.key], ToJson(a.value, a.line, Join(path, a.key), 0, &budget));
  }
  auto args = QuantArgsFromJson(j);
  if (!args.ok()) {
    // Point at the key the message is about: the first key name it mentions as a word.
    std::string_view msg = SV(args.status().message());
    int line = e.line;
    size_t best = std::string_view::npos;
    for (const auto& [key, kline] : key_lines) {
      for (size_t pos = msg.find(key); pos != std::string_view::npos; pos = msg.find(key, pos + 1)) {
        size_t end = pos + key.size();
        bool word =
            (pos == 0 || msg[pos - 1] == ' ') && (end == msg.size() || msg[end] == ' ' || msg[end] == ':');
        if (word && (best == std::string_view::npos || pos < best)) {
          best = pos;
          line = kline;
        }
        if (word) break;
      }
    }
    return Fail(line, path, msg);
  }
  if (zp_dtype) {
    LB_ASSIGN_OR_RETURN(Scalar v, ReadScalar(*zp_dtype, path));
    std::string expected = args->type == QuantType::kInt ? "int8" : "float8_e4m3fn";
    if (v.kind != Scalar::kNull) {
      std::string got = v.kind == Scalar::kString ? v.s : zp_dtype->value.Scalar();
      if (absl::StartsWith(got, "torch.")) got = got.substr(6);
      if (got != expected) {
        return Fail(zp_dtype->line, Join(path, "zp_dtype"),
                    Cat("'", got, "' is not supported by Lowbit (only ", expected, " for these args)"));
      }
    }
  }
  if (args->observer && !In(kObservers, *args->observer)) {
    return Fail(key_lines.count("observer") ? key_lines["observer"] : e.line, Join(path, "observer"),
                Cat("unknown observer '", *args->observer, "' (Lowbit has: ", JoinNames(kObservers), ")"));
  }
  return *std::move(args);
}

absl::StatusOr<QuantScheme> Parser::Scheme(const Entry& g, std::string_view parent) {
  std::string path = Join(parent, g.key);
  LB_ASSIGN_OR_RETURN(std::vector<Entry> entries, Entries(g.value, g.line, path));
  QuantScheme s;
  bool has_targets = false;
  for (const Entry& e : entries) {
    if (e.key == "targets") {
      LB_ASSIGN_OR_RETURN(s.targets, Targets(e.value, e.line, Join(path, e.key), /*allow_single=*/false));
      if (s.targets.empty())
        return Fail(e.line, Join(path, e.key), "is empty, so the group quantizes nothing");
      has_targets = true;
    } else if (e.key == "weights" || e.key == "input_activations" || e.key == "output_activations") {
      if (e.value.IsNull()) continue;
      LB_ASSIGN_OR_RETURN(QuantArgs a, Args(e, path));
      std::string apath = Join(path, e.key);
      if (e.key == "input_activations") {
        if (absl::Status st = ValidateActivationArgs(a); !st.ok())
          return Fail(e.line, apath, SV(st.message()));
      }
      if (e.key == "output_activations" && a.actorder != ActOrder::kNone) {
        return Fail(e.line, apath, "actorder is not allowed on activations");
      }
      if (e.key == "weights") {
        s.weights = a;
      } else if (e.key == "input_activations") {
        s.input_activations = a;
      } else {
        s.output_activations = a;
      }
    } else if (e.key == "format") {
      LB_ASSIGN_OR_RETURN(s.format, String(e, path, /*allow_null=*/true));
      if (s.format && !In(kFormats, *s.format)) {
        return Fail(e.line, Join(path, e.key),
                    Cat("'", *s.format, "' is not a format Lowbit writes (", JoinNames(kFormats), ")"));
      }
    } else {
      return Fail(e.line, path, Cat("unknown key '", e.key, "'"));
    }
  }
  if (!has_targets) return Fail(g.line, path, "missing required key 'targets'");
  if (!s.format) s.format = InferFormat(s);
  return s;
}

absl::Status Parser::CheckKvCache(const Entry& e, std::string_view modifier, const QuantArgs& kv) {
  // vLLM's FP8 KV cache takes one static k_scale / v_scale per layer.
  std::string path = Join(modifier, e.key);
  auto line_of = [&](std::string_view key) {
    if (e.value.IsMap()) {
      for (const auto& kv : e.value) {
        YAML::Node k = kv.first;
        if (k.IsScalar() && k.Scalar() == key) return LineOf(k);
      }
    }
    return e.line;
  };
  if (kv.type != QuantType::kFloat || kv.num_bits != 8) {
    return Fail(line_of(kv.type != QuantType::kFloat ? "type" : "num_bits"), path,
                Cat("Lowbit writes FP8 KV caches only (num_bits: 8, type: float); got ", kv.num_bits, "-bit ",
                    QuantTypeName(kv.type)));
  }
  if (kv.strategy_or_tensor() != Strategy::kTensor) {
    return Fail(line_of("strategy"), path,
                Cat("strategy must be tensor (one k_scale / v_scale per layer), got ",
                    StrategyName(kv.strategy_or_tensor())));
  }
  if (!kv.symmetric)
    return Fail(line_of("symmetric"), path, "must be symmetric (vLLM has no KV zero points)");
  if (kv.dynamic != Dynamic::kStatic) {
    return Fail(line_of("dynamic"), path, "must be static (dynamic: false): the scales are calibrated");
  }
  return absl::OkStatus();
}

absl::StatusOr<SmoothQuantPlan> Parser::SmoothQuant(const std::vector<Entry>& entries, int line) {
  const std::string_view m = kSmoothQuant;
  SmoothQuantPlan p;
  for (const Entry& e : entries) {
    std::string path = Join(m, e.key);
    bool handled = false;
    LB_RETURN_IF_ERROR(CommonKey(e, m, &handled));
    if (handled) {
      // SmoothQuant folds scales into weights once; llm-compressor refuses a schedule.
      if (e.key == "start" || e.key == "end") {
        LB_ASSIGN_OR_RETURN(std::optional<double> v, Number(e, m, true));
        if (v && *v != 0 && *v != -1)
          return Fail(e.line, path, "SmoothQuant is one-shot: must be null or -1");
      }
      continue;
    }
    if (e.key == "smoothing_strength") {
      LB_ASSIGN_OR_RETURN(std::optional<double> v, Number(e, m, /*allow_null=*/false));
      if (*v < 0 || *v > 1) return Fail(e.line, path, Cat("must be in [0, 1], got ", *v));
      p.smoothing_strength = *v;
    } else if (e.key == "mappings") {
      if (e.value.IsNull()) continue;
      if (!e.value.IsSequence())
        return TypeError(e.line, path, "a list of [[balance layers...], smooth layer]", e.value);
      p.mappings.clear();
      p.default_mappings = false;
      for (const YAML::Node& pair : e.value) {
        int pline = LineOf(pair) > 0 ? LineOf(pair) : e.line;
        if (!pair.IsSequence() || pair.size() != 2) {
          return TypeError(pline, path, "a pair [[balance layers...], smooth layer]", pair);
        }
        SmoothQuantMapping mapping;
        LB_ASSIGN_OR_RETURN(mapping.balance_layers, Targets(pair[0], pline, path, /*allow_single=*/true));
        if (mapping.balance_layers.empty())
          return Fail(pline, path, "a mapping needs at least one balance layer");
        LB_ASSIGN_OR_RETURN(Scalar smooth, ReadScalar(pair[1], pline, path));
        if (smooth.kind != Scalar::kString)
          return TypeError(pline, path, "a smooth layer target string", pair[1]);
        if (absl::Status st = ValidateTarget(smooth.s); !st.ok()) return Fail(pline, path, SV(st.message()));
        mapping.smooth_layer = smooth.s;
        p.mappings.push_back(std::move(mapping));
      }
      if (p.mappings.empty()) return Fail(e.line, path, "is empty; leave it out for the default mappings");
    } else if (e.key == "ignore") {
      if (e.value.IsNull()) continue;
      LB_ASSIGN_OR_RETURN(p.ignore, Targets(e.value, e.line, path, /*allow_single=*/false));
    } else if (e.key == "num_calibration_steps") {
      LB_ASSIGN_OR_RETURN(std::optional<int64_t> v, Int(e, m, /*allow_null=*/true));
      if (v && (*v < 1 || *v > INT32_MAX)) return Fail(e.line, path, "must be a positive integer or null");
      if (v) p.num_calibration_steps = static_cast<int>(*v);
    } else if (e.key == "calibration_function") {
      LB_ASSIGN_OR_RETURN(Scalar v, ReadScalar(e, m));
      if (v.kind != Scalar::kNull)
        return Fail(e.line, path, "is a Python callable; Lowbit recipes cannot set it");
    } else if (e.key == "algorithm") {
      LB_ASSIGN_OR_RETURN(std::optional<std::string> v, String(e, m, /*allow_null=*/false));
      if (*v == "smoothquant")
        p.algorithm = SmoothingAlgorithm::kSmoothQuant;
      else if (*v == "log_equalization")
        p.algorithm = SmoothingAlgorithm::kLogEqualization;
      else
        return Fail(e.line, path, Cat("'", *v, "' (expected smoothquant or log_equalization)"));
    } else {
      return Fail(e.line, m, Cat("unknown key '", e.key, "'"));
    }
  }
  return p;
}

absl::StatusOr<QuantizationPlan> Parser::Quantization(std::string_view m, const std::vector<Entry>& entries,
                                                      int line) {
  const bool gptq = m == kGptq;
  QuantizationPlan p;
  p.algorithm = gptq ? QuantAlgorithm::kGptq : QuantAlgorithm::kRtn;
  std::vector<std::string> targets = {"Linear"};
  const Entry* scheme = nullptr;
  const Entry* config_groups = nullptr;
  const Entry* actorder_entry = nullptr;
  const Entry* observer_dict = nullptr;
  const Entry* first_individual_observer = nullptr;
  std::optional<ActOrder> actorder;  // the user's value when actorder_entry is set
  std::string actorder_spelling;
  bool wants_data = false;

  for (const Entry& e : entries) {
    std::string path = Join(m, e.key);
    bool handled = false;
    LB_RETURN_IF_ERROR(CommonKey(e, m, &handled));
    if (handled) {
      if (e.key == "requires_calibration_data") {
        LB_ASSIGN_OR_RETURN(wants_data, Bool(e, m));
      }
      continue;
    }
    if (e.key == "targets") {
      LB_ASSIGN_OR_RETURN(targets, Targets(e.value, e.line, path, /*allow_single=*/true));
      if (targets.empty()) return Fail(e.line, path, "is empty, so nothing would be quantized");
    } else if (e.key == "ignore") {
      LB_ASSIGN_OR_RETURN(p.ignore, Targets(e.value, e.line, path, /*allow_single=*/false));
    } else if (e.key == "scheme") {
      if (!e.value.IsNull()) scheme = &e;
    } else if (e.key == "config_groups") {
      if (!e.value.IsNull()) config_groups = &e;
    } else if (e.key == "kv_cache_scheme") {
      if (e.value.IsNull()) continue;
      LB_ASSIGN_OR_RETURN(QuantArgs kv, Args(e, m));
      LB_RETURN_IF_ERROR(CheckKvCache(e, m, kv));
      p.kv_cache_scheme = kv;
    } else if (e.key == "weight_observer" || e.key == "input_observer" || e.key == "output_observer") {
      LB_ASSIGN_OR_RETURN(std::optional<std::string> v, String(e, m, /*allow_null=*/true));
      if (!v) continue;
      if (!In(kObservers, *v)) return Fail(e.line, path, Cat("unknown observer '", *v, "'"));
      OverrideSlot(p.observer_overrides, e.key) = v;
      if (!first_individual_observer) first_individual_observer = &e;
    } else if (e.key == "observer") {
      if (e.value.IsNull()) continue;
      observer_dict = &e;
    } else if (e.key == "bypass_divisibility_checks") {
      LB_ASSIGN_OR_RETURN(p.bypass_divisibility_checks, Bool(e, m));
    } else if (gptq && e.key == "block_size") {
      LB_ASSIGN_OR_RETURN(std::optional<int64_t> v, Int(e, m, /*allow_null=*/false));
      if (*v < 1 || *v > (1 << 20))
        return Fail(e.line, path, Cat("must be a positive column count, got ", *v));
      p.block_size = static_cast<int>(*v);
    } else if (gptq && e.key == "dampening_frac") {
      LB_ASSIGN_OR_RETURN(std::optional<double> v, Number(e, m, /*allow_null=*/false));
      if (*v < 0) return Fail(e.line, path, Cat("must be >= 0, got ", *v));
      p.dampening_frac = *v;
    } else if (gptq && e.key == "actorder") {
      actorder_entry = &e;
      LB_ASSIGN_OR_RETURN(Scalar v, ReadScalar(e, m));
      if (v.kind == Scalar::kBool) {  // compressed-tensors: true means "group", false null
        actorder = v.b ? std::optional(ActOrder::kGroup) : std::nullopt;
        actorder_spelling = v.b ? "group" : "";
      } else if (v.kind == Scalar::kString && ParseActOrder(v.s)) {
        actorder = ParseActOrder(v.s);
        actorder_spelling = absl::AsciiStrToLower(v.s);
      } else if (v.kind != Scalar::kNull) {
        return Fail(
            e.line, path,
            Cat("'", e.value.Scalar(), "' (expected static, weight, group, dynamic, a boolean or null)"));
      }
    } else if (gptq && e.key == "offload_hessians") {
      LB_ASSIGN_OR_RETURN(p.offload_hessians, Bool(e, m));
    } else {
      return Fail(e.line, m, Cat("unknown key '", e.key, "'"));
    }
  }

  if (observer_dict) {
    if (first_individual_observer) {
      return Fail(observer_dict->line, Join(m, "observer"),
                  Cat("cannot be combined with '", first_individual_observer->key, "' (line ",
                      first_individual_observer->line, ")"));
    }
    std::string path = Join(m, "observer");
    LB_ASSIGN_OR_RETURN(std::vector<Entry> obs, Entries(observer_dict->value, observer_dict->line, path));
    for (const Entry& o : obs) {
      if (o.key != "weights" && o.key != "input" && o.key != "output") {
        return Fail(o.line, path, Cat("unknown key '", o.key, "' (expected weights, input or output)"));
      }
      LB_ASSIGN_OR_RETURN(std::optional<std::string> v, String(o, path, /*allow_null=*/false));
      if (!In(kObservers, *v)) return Fail(o.line, Join(path, o.key), Cat("unknown observer '", *v, "'"));
      OverrideSlot(p.observer_overrides, o.key) = v;
    }
  }

  if (scheme && config_groups) {
    const Entry* later = scheme->line > config_groups->line ? scheme : config_groups;
    return Fail(later->line, m, "'scheme' and 'config_groups' are mutually exclusive");
  }
  if (scheme) {
    std::string path = Join(m, "scheme");
    // A preset name applied to `targets`, or {PRESET: targets, ...}: one group_i each.
    std::vector<std::tuple<std::string, std::vector<std::string>, int>> presets;
    if (scheme->value.IsMap()) {
      LB_ASSIGN_OR_RETURN(std::vector<Entry> items, Entries(scheme->value, scheme->line, path));
      for (const Entry& it : items) {
        LB_ASSIGN_OR_RETURN(std::vector<std::string> t, Targets(it.value, it.line, Join(path, it.key), true));
        presets.emplace_back(it.key, std::move(t), it.line);
      }
      if (presets.empty()) return Fail(scheme->line, path, "is an empty mapping");
    } else {
      LB_ASSIGN_OR_RETURN(std::optional<std::string> name, String(*scheme, m, /*allow_null=*/false));
      presets.emplace_back(*name, targets, scheme->line);
    }
    for (size_t i = 0; i < presets.size(); ++i) {
      auto& [name, t, pline] = presets[i];
      auto s = PresetScheme(name, t);
      if (!s.ok()) return Fail(pline, path, SV(s.status().message()));
      p.config_groups[Cat("group_", i)] = *std::move(s);
    }
  } else if (config_groups) {
    std::string path = Join(m, "config_groups");
    LB_ASSIGN_OR_RETURN(std::vector<Entry> groups, Entries(config_groups->value, config_groups->line, path));
    for (const Entry& g : groups) {
      LB_ASSIGN_OR_RETURN(p.config_groups[g.key], Scheme(g, path));
    }
  }

  // Modifier-level observers override every group's args (not the KV cache scheme).
  for (auto& [name, s] : p.config_groups) {
    if (s.weights && p.observer_overrides.weights) s.weights->observer = p.observer_overrides.weights;
    if (s.input_activations && p.observer_overrides.input)
      s.input_activations->observer = p.observer_overrides.input;
    if (s.output_activations && p.observer_overrides.output)
      s.output_activations->observer = p.observer_overrides.output;
  }

  if (gptq) {
    // GPTQModifier.resolve_quantization_config (algorithms doc §1.6, since llm-compressor
    // 0.11): the default ("static" sentinel) fills weights whose actorder is null; a value
    // the user gave is applied, and conflicts with a group's own different value. This
    // covers tensor/channel/group/tensor_group/block weights, not only group strategy.
    // "static"/"weight" and "dynamic"/"group" compare as the aliases they are.
    p.actorder = actorder_entry ? actorder : std::optional(ActOrder::kWeight);
    for (auto& [name, s] : p.config_groups) {
      if (!s.weights) continue;
      QuantArgs& w = *s.weights;
      Strategy st = w.strategy_or_tensor();
      if (st == Strategy::kToken || st == Strategy::kAttnHead) continue;
      std::optional<ActOrder> existing =
          w.actorder == ActOrder::kNone ? std::nullopt : std::optional(w.actorder);
      if (!actorder_entry) {
        if (!existing) {
          w.actorder = ActOrder::kWeight;
          w.actorder_spelling = "static";
        }
      } else if (!existing) {
        w.actorder = actorder.value_or(ActOrder::kNone);
        w.actorder_spelling = actorder_spelling;
      } else if (existing != actorder) {
        return Fail(actorder_entry->line, Join(m, "actorder"),
                    Cat("conflicts with config group '", name, "' actorder '", w.actorder_spelling,
                        "'; set it in one place"));
      }
      if (w.actorder == ActOrder::kGroup && st != Strategy::kGroup && st != Strategy::kTensorGroup) {
        Warn(actorder_entry ? actorder_entry->line : line, m,
             Cat("actorder group needs group strategy; config group '", name, "' (", StrategyName(st),
                 ") falls back to no activation ordering"));
        w.actorder = ActOrder::kNone;
        w.actorder_spelling.clear();
      }
    }
    bool any_weights = false;
    for (const auto& [name, s] : p.config_groups) any_weights |= s.weights.has_value();
    if (!any_weights) {
      return Fail(line, m, "quantizes no weights: set 'scheme' or 'config_groups' with weights");
    }
  } else {
    p.actorder = std::nullopt;
    if (p.config_groups.empty() && !p.kv_cache_scheme) {
      return Fail(line, m, "needs 'scheme', 'config_groups' or 'kv_cache_scheme'");
    }
  }

  // Catches an invalid ignore pattern and one target claimed by two groups.
  if (auto r = SchemeResolver::Create(p.config_groups, p.ignore); !r.ok()) {
    return Fail(config_groups ? config_groups->line
                : scheme      ? scheme->line
                              : line,
                m, SV(r.status().message()));
  }

  // llm-compressor's rule for choosing its data-free pipeline (algorithms doc §6.1).
  p.requires_calibration_data = gptq || wants_data || p.kv_cache_scheme.has_value();
  for (const auto& [name, s] : p.config_groups) {
    if (s.input_activations && s.input_activations->dynamic != Dynamic::kDynamic)
      p.requires_calibration_data = true;
    if (s.output_activations && s.output_activations->dynamic == Dynamic::kStatic)
      p.requires_calibration_data = true;
  }
  return p;
}

absl::Status Parser::Modifier(const Entry& m, RecipePlan& plan) {
  LB_ASSIGN_OR_RETURN(std::vector<Entry> entries, Entries(m.value, m.line, m.key));
  if (m.key == kSmoothQuant) {
    if (smoothquant_line_) {
      return Fail(m.line, m.key,
                  Cat("a second SmoothQuantModifier (the first is at line ", smoothquant_line_,
                      "); Lowbit runs one"));
    }
    if (quantization_line_) {
      return Fail(m.line, m.key,
                  Cat("must come before ", quantization_name_, " (line ", quantization_line_,
                      "): smoothing after quantization "
                      "would rescale already-quantized weights"));
    }
    smoothquant_line_ = m.line;
    LB_ASSIGN_OR_RETURN(plan.smoothquant, SmoothQuant(entries, m.line));
    return absl::OkStatus();
  }
  if (m.key == kGptq || m.key == kRtn) {
    if (quantization_line_) {
      // Refused rather than merged: the pipeline runs one quantization algorithm per
      // recipe, and llm-compressor's own mixed recipes split targets between modifiers.
      return Fail(
          m.line, m.key,
          Cat("a second quantization modifier (", quantization_name_, " is at line ", quantization_line_,
              "); Lowbit runs one per recipe: merge them into one "
              "modifier's config_groups"));
    }
    quantization_line_ = m.line;
    quantization_name_ = m.key;
    LB_ASSIGN_OR_RETURN(plan.quantization, Quantization(m.key, entries, m.line));
    return absl::OkStatus();
  }
  std::string supported = Cat(kGptq, ", ", kRtn, ", ", kSmoothQuant);
  if (absl::EndsWith(m.key, "Modifier")) {
    return Fail(m.line, m.key, Cat("modifier not supported by Lowbit (supported: ", supported, ")"));
  }
  return Fail(m.line, m.key, Cat("unknown modifier (supported: ", supported, ")"));
}

absl::Status Parser::Stage(const Entry& stage, RecipePlan& plan) {
  LB_ASSIGN_OR_RETURN(std::vector<Entry> entries, Entries(stage.value, stage.line, stage.key));
  for (const Entry& e : entries) {
    if (absl::EndsWith(e.key, "_modifiers")) {
      LB_ASSIGN_OR_RETURN(std::vector<Entry> modifiers, Entries(e.value, e.line, Join(stage.key, e.key)));
      for (const Entry& m : modifiers) LB_RETURN_IF_ERROR(Modifier(m, plan));
    } else if (In(kDeprecatedKeys, e.key)) {
      Warn(e.line, stage.key, Cat("'", e.key, "' is no longer an llm-compressor key; dropped"));
    } else {
      Warn(e.line, stage.key, Cat("key '", e.key, "' ignored (only *_modifiers keys hold modifiers)"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<RecipePlan> Parser::Run(const YAML::Node& root) {
  const char* kShape = "a recipe is a mapping: <name>_stage: {<name>_modifiers: {ModifierClass: {args}}}";
  if (root.IsNull()) return Fail(0, "", "empty recipe");
  if (!root.IsMap()) {
    // llm-compressor refuses anything but a mapping too; a plain string is most often a
    // file path that does not exist.
    return Fail(LineOf(root), "", Cat(kShape, "; got ", root.IsSequence() ? "a list" : "a scalar"));
  }
  RecipePlan plan;
  LB_ASSIGN_OR_RETURN(std::vector<Entry> entries, Entries(root, 1, ""));
  for (const Entry& e : entries) {
    if (absl::EndsWith(e.key, "_stage")) {
      LB_RETURN_IF_ERROR(Stage(e, plan));
    } else if (e.key == "args") {
      Warn(e.line, "args", "recipe args are not used by Lowbit (nor by llm-compressor's runner); ignored");
    } else if (absl::EndsWith(e.key, "Modifier") || absl::EndsWith(e.key, "_modifiers")) {
      // llm-compressor would silently ignore this key and run nothing.
      return Fail(e.line, e.key, Cat("outside a stage; ", kShape));
    } else {
      Warn(e.line, "", Cat("top-level key '", e.key, "' ignored (not a *_stage)"));
    }
  }
  if (!plan.smoothquant && !plan.quantization) return Fail(0, "", Cat("no modifiers; ", kShape));
  if (plan.smoothquant && !plan.quantization) {
    Warn(smoothquant_line_, kSmoothQuant, "no quantization modifier follows; the model is only smoothed");
  }
  return plan;
}

// Records where each document starts.
class DocumentStarts : public YAML::EventHandler {
 public:
  std::vector<YAML::Mark> marks;
  void OnDocumentStart(const YAML::Mark& mark) override { marks.push_back(mark); }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
  void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t, const std::string&) override {}
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                       YAML::EmitterStyle::value) override {}
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {
  }
  void OnMapEnd() override {}
};

// A recipe is one YAML document (PyYAML's safe_load refuses a stream of several). Not
// YAML::LoadAll: in yaml-cpp 0.7 it loops forever, allocating, on a stray token such as
// "," (fixed upstream in 0.9, PR #1319); here the parser is stepped at most three times and
// a document that starts where the previous one did is that same stuck token.
absl::Status CheckSingleDocument(const std::string& yaml, std::string_view source) {
  std::istringstream in(yaml);
  YAML::Parser parser(in);
  DocumentStarts starts;
  for (int i = 0; i < 3 && parser.HandleNextDocument(starts); ++i) {
  }
  const std::vector<YAML::Mark>& m = starts.marks;
  for (size_t i = 1; i < m.size(); ++i) {
    if (m[i].pos == m[i - 1].pos) {
      return absl::InvalidArgumentError(
          Cat(source, ":", m[i].line + 1, ": malformed YAML: unexpected token"));
    }
  }
  if (m.size() > 1) {
    return absl::InvalidArgumentError(
        Cat(source, ":", m[1].line + 1, ": more than one YAML document; a recipe is one"));
  }
  return absl::OkStatus();
}

}  // namespace

std::string_view QuantAlgorithmName(QuantAlgorithm a) { return a == QuantAlgorithm::kGptq ? "GPTQ" : "RTN"; }

const std::vector<SmoothQuantMapping>& DefaultSmoothQuantMappings() {
  static const auto* m = new std::vector<SmoothQuantMapping>{
      {{"re:.*q_proj", "re:.*k_proj", "re:.*v_proj"}, "re:.*input_layernorm"},
      {{"re:.*gate_proj", "re:.*up_proj"}, "re:.*post_attention_layernorm"},
  };
  return *m;
}

QuantizationConfig QuantizationPlan::ToQuantizationConfig() const {
  return MakeQuantizationConfig(config_groups, ignore, kv_cache_scheme);
}

absl::StatusOr<RecipePlan> ParseRecipe(std::string_view text, std::string_view source_name) {
  std::vector<std::string> warnings;
  Parser parser(source_name, &warnings);
  try {
    std::string yaml(text);
    LB_RETURN_IF_ERROR(CheckSingleDocument(yaml, source_name));
    auto plan = parser.Run(YAML::Load(yaml));
    if (!plan.ok()) return plan.status();
    plan->warnings = std::move(warnings);
    return plan;
  } catch (const YAML::Exception& e) {
    int line = e.mark.line < 0 ? 0 : e.mark.line + 1;
    return absl::InvalidArgumentError(Cat(source_name, ":", line, ": malformed YAML: ", e.msg));
  } catch (const std::exception& e) {  // e.g. bad_alloc; no exception leaves this function
    return absl::InvalidArgumentError(Cat(source_name, ": cannot read recipe: ", e.what()));
  }
}

absl::StatusOr<RecipePlan> ParseRecipeFile(const std::string& path) {
  auto text = ReadFileToString(path);
  if (!text.ok()) return text.status();
  return ParseRecipe(*text, path);
}

}  // namespace lowbit

#undef LB_ASSIGN_OR_RETURN
#undef LB_ASSIGN_OR_RETURN_IMPL_
#undef LB_RETURN_IF_ERROR
#undef LB_CONCAT_
#undef LB_CONCAT_INNER_
