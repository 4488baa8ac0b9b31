#include "common/module_match.h"

#include <algorithm>
#include <exception>

#include "absl/strings/str_cat.h"

namespace lowbit {
namespace {

// Debian's Abseil has its own string_view type; convert at the StrCat boundary.
absl::string_view AV(std::string_view s) { return {s.data(), s.size()}; }

// Patterns longer than this are refused: libstdc++ compiles regexes recursively, and a
// recipe (possibly from an untrusted client) must not be able to exhaust the stack.
constexpr size_t kMaxPatternLength = 1024;

absl::StatusOr<std::shared_ptr<const std::regex>> CompilePattern(std::string_view target) {
  std::string_view pattern = target.substr(kRegexPrefix.size());
  if (pattern.size() > kMaxPatternLength) {
    return absl::InvalidArgumentError(absl::StrCat("target '", AV(target.substr(0, 40)),
                                                   "...': pattern longer than ", kMaxPatternLength,
                                                   " characters"));
  }
  auto flags = std::regex::ECMAScript;
#if defined(__GLIBCXX__)
  // Thompson-style (BFS) matching: time linear in the name, bounded recursion, no
  // catastrophic backtracking on patterns such as "(a*)*b". Back-references, which
  // need backtracking, are then a compile error, reported like any invalid pattern.
  flags |= std::regex_constants::__polynomial;
#endif
  try {
    return std::make_shared<const std::regex>(pattern.begin(), pattern.end(), flags);
  } catch (const std::exception& e) {  // std::regex_error, or bad_alloc on a huge NFA
    return absl::InvalidArgumentError(
        absl::StrCat("target '", AV(target), "': invalid regular expression (", e.what(), ")"));
  }
}

bool ClassMatches(std::string_view target, std::span<const std::string_view> class_names) {
  for (std::string_view c : class_names) {
    // vLLM's fused linears derive from LinearBase, which compressed-tensors treats as Linear.
    if (c == target || (c == "LinearBase" && target == "Linear")) return true;
  }
  return false;
}

}  // namespace

absl::Status ValidateTarget(std::string_view target) {
  if (!target.starts_with(kRegexPrefix)) return absl::OkStatus();
  return CompilePattern(target).status();
}

absl::StatusOr<Target> Target::Create(std::string_view text) {
  Target t;
  t.text_ = std::string(text);
  if (text.starts_with(kRegexPrefix)) {
    auto re = CompilePattern(text);
    if (!re.ok()) return re.status();
    t.regex_ = *std::move(re);
  }
  return t;
}

bool Target::MatchesName(std::string_view module_name) const {
  if (!regex_) return text_ == module_name;
  // Python re.match: the match must start at position 0 but may end anywhere.
  try {
    return std::regex_search(module_name.begin(), module_name.end(), *regex_,
                             std::regex_constants::match_continuous);
  } catch (const std::exception&) {  // regex_error(error_complexity / error_stack)
    return false;
  }
}

bool Target::MatchesClass(std::span<const std::string_view> class_names) const {
  return ClassMatches(text_, class_names);
}

bool MatchesTarget(std::string_view target, std::string_view module_name,
                   std::span<const std::string_view> class_names) {
  auto t = Target::Create(target);
  return t.ok() && t->Matches(module_name, class_names);
}

bool IsIgnored(std::span<const std::string> ignore, std::string_view module_name,
               std::span<const std::string_view> class_names) {
  return std::any_of(ignore.begin(), ignore.end(),
                     [&](const std::string& i) { return MatchesTarget(i, module_name, class_names); });
}

absl::StatusOr<SchemeResolver> SchemeResolver::Create(const std::map<std::string, QuantScheme>& groups,
                                                      std::span<const std::string> ignore) {
  SchemeResolver r;
  for (const std::string& i : ignore) {
    auto t = Target::Create(i);
    if (!t.ok()) return absl::InvalidArgumentError(absl::StrCat("ignore: ", t.status().message()));
    r.ignore_.push_back(*std::move(t));
  }
  std::map<std::string, std::string> owner;  // target -> group
  for (const auto& [group, scheme] : groups) {
    for (const std::string& target : scheme.targets) {
      auto [it, inserted] = owner.emplace(target, group);
      if (!inserted) {
        if (it->second == group) continue;  // listed twice in one group: harmless
        return absl::InvalidArgumentError(absl::StrCat("target '", target, "' is claimed by config groups '",
                                                       it->second, "' and '", group, "'"));
      }
      auto t = Target::Create(target);
      if (!t.ok()) {
        return absl::InvalidArgumentError(absl::StrCat("config group '", group, "': ", t.status().message()));
      }
      r.targets_.push_back({*std::move(t), group});
    }
  }
  // compressed-tensors sorts by ("re:" in target, target): the containment test, not a
  // prefix test, is what it does, so "a.re:b" (an exact name) sorts with the patterns.
  std::sort(r.targets_.begin(), r.targets_.end(), [](const Entry& a, const Entry& b) {
    bool ra = a.target.text().find(kRegexPrefix) != std::string::npos;
    bool rb = b.target.text().find(kRegexPrefix) != std::string::npos;
    if (ra != rb) return !ra;
    return a.target.text() < b.target.text();
  });
  return r;
}

bool SchemeResolver::IsIgnored(std::string_view module_name,
                               std::span<const std::string_view> class_names) const {
  return std::any_of(ignore_.begin(), ignore_.end(),
                     [&](const Target& t) { return t.Matches(module_name, class_names); });
}

std::optional<std::string> SchemeResolver::Resolve(std::string_view module_name,
                                                   std::span<const std::string_view> class_names) const {
  if (IsIgnored(module_name, class_names)) return std::nullopt;
  for (const Entry& e : targets_) {
    if (e.target.MatchesName(module_name)) return e.group;
  }
  for (const Entry& e : targets_) {
    if (e.target.MatchesClass(class_names)) return e.group;
  }
  return std::nullopt;
}

absl::StatusOr<std::optional<std::string>> ResolveScheme(const std::map<std::string, QuantScheme>& groups,
                                                         std::span<const std::string> ignore,
                                                         std::string_view module_name,
                                                         std::span<const std::string_view> class_names) {
  auto resolver = SchemeResolver::Create(groups, ignore);
  if (!resolver.ok()) return resolver.status();
  return resolver->Resolve(module_name, class_names);
}

}  // namespace lowbit
