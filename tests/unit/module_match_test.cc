// Target matching and scheme priority, hand-worked from compressed-tensors' utils/match.py
// and lifecycle/apply.py (shared/reference/llm-compressor-algorithms.md §7.3).
#include "common/module_match.h"

#include <string_view>

#include "gtest/gtest.h"

namespace lowbit {
namespace {

constexpr std::string_view kLinear[] = {"Linear", "Module"};
constexpr std::string_view kNorm[] = {"LlamaRMSNorm", "Module"};
constexpr std::string_view kAttention[] = {"LlamaAttention", "Module"};
constexpr std::string_view kVllmLinear[] = {"QKVParallelLinear", "ColumnParallelLinear", "LinearBase"};
constexpr std::string_view kQProj = "model.layers.0.self_attn.q_proj";

TEST(MatchesTarget, RegexIsAnchoredAtTheStartOnly) {
  EXPECT_TRUE(MatchesTarget("re:.*q_proj", kQProj, kLinear));
  // Python re.match: "q_proj" must occur at position 0, it does not search.
  EXPECT_FALSE(MatchesTarget("re:q_proj", kQProj, kLinear));
  // ...but need not reach the end: a prefix pattern matches every submodule.
  EXPECT_TRUE(MatchesTarget("re:model.layers.0", "model.layers.0.mlp.up_proj", kLinear));
  EXPECT_TRUE(MatchesTarget("re:model\\.layers\\.0\\.", "model.layers.0.mlp.up_proj", kLinear));
  EXPECT_FALSE(MatchesTarget("re:model\\.layers\\.1\\.", "model.layers.0.mlp.up_proj", kLinear));
  // "." is any character, so an unescaped dot also matches "model.layers.10" etc.
  EXPECT_TRUE(MatchesTarget("re:model.layers.1", "model.layers.10.mlp.up_proj", kLinear));
  // "$" anchors the end.
  EXPECT_FALSE(MatchesTarget("re:.*q_proj$", "model.layers.0.self_attn.q_proj.lora", kLinear));
  EXPECT_TRUE(MatchesTarget("re:.*self_attn\\.(k|q|o|v)_proj$", kQProj, kLinear));
  EXPECT_FALSE(MatchesTarget("re:.*mlp\\.(down|gate|up)_proj$", kQProj, kLinear));
}

TEST(MatchesTarget, ExactNameIsWholeName) {
  EXPECT_TRUE(MatchesTarget("lm_head", "lm_head", kLinear));
  EXPECT_FALSE(MatchesTarget("lm_head", "model.lm_head", kLinear));
  EXPECT_FALSE(MatchesTarget("q_proj", kQProj, kLinear));
  EXPECT_TRUE(MatchesTarget(kQProj, kQProj, kLinear));
}

TEST(MatchesTarget, ClassNameMatchesAnyClassInTheList) {
  EXPECT_TRUE(MatchesTarget("Linear", kQProj, kLinear));
  EXPECT_FALSE(MatchesTarget("Linear", "model.norm", kNorm));
  EXPECT_TRUE(MatchesTarget("LlamaAttention", "model.layers.0.self_attn", kAttention));
  EXPECT_TRUE(MatchesTarget("Module", "model.norm", kNorm));  // anywhere in the MRO
  // vLLM's LinearBase counts as Linear; nothing else is aliased.
  EXPECT_TRUE(MatchesTarget("Linear", "model.layers.0.self_attn.qkv_proj", kVllmLinear));
  EXPECT_FALSE(MatchesTarget("linear", kQProj, kLinear));  // case-sensitive
}

TEST(MatchesTarget, InvalidPatternMatchesNothingAndValidationSaysWhy) {
  EXPECT_FALSE(MatchesTarget("re:(q_proj", kQProj, kLinear));
  absl::Status st = ValidateTarget("re:(q_proj");
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("re:(q_proj"), std::string::npos) << st;
  EXPECT_TRUE(ValidateTarget("re:.*q_proj").ok());
  EXPECT_TRUE(ValidateTarget("(not a regex, a name").ok());  // names are never compiled
  // Python-only syntax is reported rather than silently misread.
  EXPECT_FALSE(ValidateTarget("re:(?P<x>q)_proj").ok());
  EXPECT_FALSE(ValidateTarget("re:" + std::string(5000, 'a')).ok());
  EXPECT_FALSE(ValidateTarget("re:(a)\\1").ok());  // back-references are refused
}

TEST(MatchesTarget, PathologicalPatternsStayFast) {
  // Catastrophic for a backtracking engine (2^40 paths); linear for ours.
  std::string name(40, 'a');
  EXPECT_FALSE(MatchesTarget("re:(a*)*b", name, kLinear));
  EXPECT_TRUE(MatchesTarget("re:(a*)*a", name, kLinear));
  // A counted repetition that would need millions of NFA states is refused, not built.
  EXPECT_FALSE(ValidateTarget("re:((a{1000}){1000}){1000}").ok());
}

TEST(IsIgnored, AnyEntryMatches) {
  const std::vector<std::string> ignore = {"lm_head", "re:.*mlp\\.down_proj$", "LlamaRMSNorm"};
  EXPECT_TRUE(IsIgnored(ignore, "lm_head", kLinear));
  EXPECT_TRUE(IsIgnored(ignore, "model.layers.3.mlp.down_proj", kLinear));
  EXPECT_TRUE(IsIgnored(ignore, "model.norm", kNorm));
  EXPECT_FALSE(IsIgnored(ignore, "model.layers.3.mlp.up_proj", kLinear));
  EXPECT_FALSE(IsIgnored({}, "lm_head", kLinear));
}

QuantScheme Group(std::vector<std::string> targets) {
  QuantScheme s;
  s.targets = std::move(targets);
  return s;
}

TEST(SchemeResolver, IgnoreWinsOverEveryTarget) {
  std::map<std::string, QuantScheme> groups = {{"g", Group({"lm_head", "Linear"})}};
  std::vector<std::string> ignore = {"lm_head"};
  auto r = SchemeResolver::Create(groups, ignore);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->Resolve("lm_head", kLinear), std::nullopt);
  EXPECT_EQ(r->Resolve(kQProj, kLinear), "g");
  EXPECT_EQ(r->Resolve("model.norm", kNorm), std::nullopt);  // no target matches
}

TEST(SchemeResolver, ExactNameBeatsRegexBeatsClass) {
  std::map<std::string, QuantScheme> groups = {
      {"a_class", Group({"Linear"})},
      {"b_regex", Group({"re:.*self_attn.*"})},
      {"c_exact", Group({"model.layers.0.self_attn.q_proj"})},
  };
  auto r = SchemeResolver::Create(groups, {});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->Resolve(kQProj, kLinear), "c_exact");
  EXPECT_EQ(r->Resolve("model.layers.1.self_attn.q_proj", kLinear), "b_regex");
  EXPECT_EQ(r->Resolve("model.layers.1.mlp.up_proj", kLinear), "a_class");
}

TEST(SchemeResolver, WithinAKindTheSortedFirstTargetWins) {
  // Both patterns match; "re:.*proj" < "re:.*q_proj" in byte order, so group z wins even
  // though group a's name sorts first: priority follows the targets, not the groups.
  std::map<std::string, QuantScheme> groups = {
      {"a", Group({"re:.*q_proj"})},
      {"z", Group({"re:.*proj"})},
  };
  auto r = SchemeResolver::Create(groups, {});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->Resolve(kQProj, kLinear), "z");
}

TEST(SchemeResolver, ANameTargetThatIsAClassRanksAsAClassMatch) {
  // "Linear" is a name target, but it matches q_proj through the class list only, so the
  // regex group (a name match) comes first.
  std::map<std::string, QuantScheme> groups = {
      {"by_class", Group({"Linear"})},
      {"by_regex", Group({"re:.*q_proj"})},
  };
  auto r = SchemeResolver::Create(groups, {});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->Resolve(kQProj, kLinear), "by_regex");
  EXPECT_EQ(r->Resolve("model.layers.0.self_attn.k_proj", kLinear), "by_class");
}

TEST(SchemeResolver, RefusesBadPatternsAndSharedTargets) {
  std::map<std::string, QuantScheme> bad_regex = {{"g", Group({"re:[q_proj"})}};
  EXPECT_FALSE(SchemeResolver::Create(bad_regex, {}).ok());
  std::vector<std::string> bad_ignore = {"re:(lm_head"};
  EXPECT_FALSE(SchemeResolver::Create({{"g", Group({"Linear"})}}, bad_ignore).ok());
  std::map<std::string, QuantScheme> shared = {{"g0", Group({"Linear"})}, {"g1", Group({"Linear"})}};
  auto r = SchemeResolver::Create(shared, {});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("'Linear'"), std::string::npos) << r.status();
}

TEST(ResolveScheme, OneOffForm) {
  std::map<std::string, QuantScheme> groups = {{"group_0", Group({"Linear"})}};
  std::vector<std::string> ignore = {"lm_head"};
  EXPECT_EQ(*ResolveScheme(groups, ignore, kQProj, kLinear), "group_0");
  EXPECT_EQ(*ResolveScheme(groups, ignore, "lm_head", kLinear), std::nullopt);
}

}  // namespace
}  // namespace lowbit
