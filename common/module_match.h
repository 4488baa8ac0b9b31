// Which modules a target string names, as compressed-tensors decides it
// (CT utils/match.py; shared/reference/llm-compressor-algorithms.md §7.3). A target is:
//   - an exact module name ("lm_head", "model.layers.0.mlp.down_proj");
//   - "re:<pattern>", Python re.match on the dotted name: anchored at the start only, so
//     "re:.*q_proj" matches "model.layers.0.self_attn.q_proj" and "re:q_proj" does not;
//   - a class name equal to any class in the module's class list (its MRO, e.g.
//     {"LlamaAttention", "Module"}); vLLM's "LinearBase" also counts as "Linear".
// Patterns use ECMAScript syntax, which agrees with Python's for the patterns recipes use
// (".*", "\\.", "(q|k)_proj", "$", "[0-9]+"); Python-only syntax such as (?P<name>...) or
// (?i) is reported as invalid by ValidateTarget.
#ifndef LOWBIT_COMMON_MODULE_MATCH_H_
#define LOWBIT_COMMON_MODULE_MATCH_H_

#include <map>
#include <memory>
#include <optional>
#include <regex>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/quant_args.h"

namespace lowbit {

inline constexpr std::string_view kRegexPrefix = "re:";

// OK for a name target; for "re:" the pattern must compile (InvalidArgument naming it).
absl::Status ValidateTarget(std::string_view target);

// One target, its regex compiled once. Copies share the compiled regex.
class Target {
 public:
  static absl::StatusOr<Target> Create(std::string_view text);

  bool MatchesName(std::string_view module_name) const;
  bool MatchesClass(std::span<const std::string_view> class_names) const;
  bool Matches(std::string_view module_name, std::span<const std::string_view> class_names) const {
    return MatchesName(module_name) || MatchesClass(class_names);
  }
  const std::string& text() const { return text_; }
  bool is_regex() const { return regex_ != nullptr; }

 private:
  std::string text_;
  std::shared_ptr<const std::regex> regex_;  // null for name targets
};

// One-off forms (compile the pattern on every call; use Target / SchemeResolver in loops).
// An invalid pattern matches nothing.
bool MatchesTarget(std::string_view target, std::string_view module_name,
                   std::span<const std::string_view> class_names);
bool IsIgnored(std::span<const std::string> ignore, std::string_view module_name,
               std::span<const std::string_view> class_names);

// Picks the config group for a module the way compressed-tensors' apply_quantization_config
// does: an ignored module gets none; otherwise the module's matching targets are ordered
// name matches first (exact names sorted, then "re:" patterns sorted), then class-name
// matches, and the group owning the first one wins.
class SchemeResolver {
 public:
  // Errors: an invalid pattern, or one target string claimed by two groups (compressed-
  // tensors would silently let the later group win; our std::map has no "later").
  static absl::StatusOr<SchemeResolver> Create(const std::map<std::string, QuantScheme>& groups,
                                               std::span<const std::string> ignore);

  bool IsIgnored(std::string_view module_name, std::span<const std::string_view> class_names) const;
  // The group name, or nullopt when the module is ignored or no target matches.
  std::optional<std::string> Resolve(std::string_view module_name,
                                     std::span<const std::string_view> class_names) const;

 private:
  struct Entry {
    Target target;
    std::string group;
  };
  std::vector<Target> ignore_;
  std::vector<Entry> targets_;  // in compressed-tensors' priority order
};

// One-off form of SchemeResolver::Resolve.
absl::StatusOr<std::optional<std::string>> ResolveScheme(const std::map<std::string, QuantScheme>& groups,
                                                         std::span<const std::string> ignore,
                                                         std::string_view module_name,
                                                         std::span<const std::string_view> class_names);

}  // namespace lowbit

#endif  // LOWBIT_COMMON_MODULE_MATCH_H_
