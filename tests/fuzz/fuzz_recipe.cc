// libFuzzer target: any bytes given as a recipe must come back as a plan or a status, never
// a crash, a hang or an escaped exception; an accepted plan must hold only valid targets.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "common/module_match.h"
#include "common/recipe.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto plan = lowbit::ParseRecipe(text, "fuzz.yaml");
  if (!plan.ok()) {
    if (plan.status().code() != absl::StatusCode::kInvalidArgument) std::abort();
    return 0;
  }
  if (!plan->smoothquant && !plan->quantization) std::abort();  // "no modifiers" is an error
  if (plan->quantization) {
    const auto& q = *plan->quantization;
    // The parser validated every target; the resolver must agree, and resolving must work.
    auto resolver = lowbit::SchemeResolver::Create(q.config_groups, q.ignore);
    if (!resolver.ok()) std::abort();
    constexpr std::string_view kLinear[] = {"Linear"};
    (void)resolver->Resolve("model.layers.0.self_attn.q_proj", kLinear);
    (void)q.ToQuantizationConfig();
  }
  return 0;
}
