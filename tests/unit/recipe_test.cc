// Recipes parse to the plans the product docs describe, asserted field by field against
// hand-written expectations (product-docs/*.md; algorithms doc §1.1, §1.6, §3.3, §6.2, §7);
// every malformed recipe is an InvalidArgument naming the key and its line.
#include "common/recipe.h"

#include <string>

#include "gtest/gtest.h"

namespace lowbit {
namespace {

std::string Fixture(const std::string& name) {
  return std::string(LOWBIT_SOURCE_DIR) + "/tests/fixtures/recipes/" + name;
}

RecipePlan Load(const std::string& name) {
  auto plan = ParseRecipeFile(Fixture(name));
  EXPECT_TRUE(plan.ok()) << plan.status();
  return plan.ok() ? *std::move(plan) : RecipePlan{};
}

// Asserts that `text` is refused with a message holding "recipe.yaml:<line>:" (or just
// "recipe.yaml:" for line 0, an error about the whole file) and `needle`.
void ExpectError(const std::string& text, int line, const std::string& needle) {
  auto plan = ParseRecipe(text, "recipe.yaml");
  ASSERT_FALSE(plan.ok()) << "parsed:\n" << text;
  EXPECT_EQ(plan.status().code(), absl::StatusCode::kInvalidArgument);
  std::string msg(plan.status().message());
  std::string where = line > 0 ? "recipe.yaml:" + std::to_string(line) + ":" : "recipe.yaml: ";
  EXPECT_EQ(msg.rfind(where, 0), 0u) << "wanted line " << line << ": " << msg;
  EXPECT_NE(msg.find(needle), std::string::npos) << "wanted '" << needle << "': " << msg;
}

// The shape every GPTQ test recipe below shares; `extra` lands at line 4 (inside
// GPTQModifier), so errors in it are reported at line 4.
std::string Gptq(const std::string& extra) {
  return "quant_stage:\n"
         "  quant_modifiers:\n"
         "    GPTQModifier:\n" +
         extra;
}

// llm-compressor's DEFAULT_SMOOTHQUANT_MAPPINGS, written out (algorithms doc §3.3).
const std::vector<SmoothQuantMapping> kLlamaMappings = {
    {{"re:.*q_proj", "re:.*k_proj", "re:.*v_proj"}, "re:.*input_layernorm"},
    {{"re:.*gate_proj", "re:.*up_proj"}, "re:.*post_attention_layernorm"},
};

TEST(DefaultSmoothQuantMappings, AreLlamas) { EXPECT_EQ(DefaultSmoothQuantMappings(), kLlamaMappings); }

// ---- product-doc recipes

TEST(RecipeFixture, Int8W8A8) {
  RecipePlan plan = Load("int8_w8a8.yaml");
  EXPECT_TRUE(plan.warnings.empty());

  ASSERT_TRUE(plan.smoothquant.has_value());
  const SmoothQuantPlan& sq = *plan.smoothquant;
  EXPECT_DOUBLE_EQ(sq.smoothing_strength, 0.8);
  EXPECT_EQ(sq.mappings, kLlamaMappings);
  EXPECT_TRUE(sq.default_mappings);
  EXPECT_TRUE(sq.ignore.empty());
  EXPECT_EQ(sq.algorithm, SmoothingAlgorithm::kSmoothQuant);

  ASSERT_TRUE(plan.quantization.has_value());
  const QuantizationPlan& q = *plan.quantization;
  EXPECT_EQ(q.algorithm, QuantAlgorithm::kGptq);
  EXPECT_EQ(q.ignore, std::vector<std::string>{"lm_head"});
  EXPECT_FALSE(q.kv_cache_scheme.has_value());
  EXPECT_EQ(q.block_size, 128);
  EXPECT_DOUBLE_EQ(q.dampening_frac, 0.01);
  EXPECT_EQ(q.actorder, ActOrder::kWeight);  // the "static" default
  EXPECT_FALSE(q.offload_hessians);
  EXPECT_TRUE(q.requires_calibration_data);
  ASSERT_EQ(q.config_groups.size(), 1u);
  ASSERT_TRUE(q.config_groups.count("group_0"));
  const QuantScheme& g = q.config_groups.at("group_0");
  EXPECT_EQ(g.targets, std::vector<std::string>{"Linear"});
  EXPECT_EQ(g.format, "int-quantized");
  // Weights: int8 symmetric per-channel static, GPTQ in "static" activation order (applied
  // to channel strategy too since llm-compressor 0.11).
  ASSERT_TRUE(g.weights.has_value());
  EXPECT_EQ(g.weights->num_bits, 8);
  EXPECT_EQ(g.weights->type, QuantType::kInt);
  EXPECT_TRUE(g.weights->symmetric);
  EXPECT_EQ(g.weights->strategy, Strategy::kChannel);
  EXPECT_EQ(g.weights->group_size, std::nullopt);
  EXPECT_EQ(g.weights->dynamic, Dynamic::kStatic);
  EXPECT_EQ(g.weights->actorder, ActOrder::kWeight);
  EXPECT_EQ(g.weights->actorder_spelling, "static");
  EXPECT_EQ(g.weights->observer, "memoryless_minmax");
  // Input activations: int8 symmetric per-token dynamic, no observer.
  ASSERT_TRUE(g.input_activations.has_value());
  EXPECT_EQ(g.input_activations->num_bits, 8);
  EXPECT_EQ(g.input_activations->type, QuantType::kInt);
  EXPECT_TRUE(g.input_activations->symmetric);
  EXPECT_EQ(g.input_activations->strategy, Strategy::kToken);
  EXPECT_EQ(g.input_activations->dynamic, Dynamic::kDynamic);
  EXPECT_EQ(g.input_activations->actorder, ActOrder::kNone);
  EXPECT_EQ(g.input_activations->observer, std::nullopt);
  EXPECT_FALSE(g.output_activations.has_value());

  QuantizationConfig config = q.ToQuantizationConfig();
  EXPECT_EQ(config.format, "int-quantized");
  EXPECT_EQ(config.ignore, std::vector<std::string>{"lm_head"});
}

void ExpectW4A16Weights(const QuantScheme& g, std::string_view actorder_spelling) {
  EXPECT_EQ(g.targets, std::vector<std::string>{"Linear"});
  EXPECT_EQ(g.format, "pack-quantized");
  EXPECT_FALSE(g.input_activations.has_value());
  EXPECT_FALSE(g.output_activations.has_value());
  ASSERT_TRUE(g.weights.has_value());
  EXPECT_EQ(g.weights->num_bits, 4);
  EXPECT_EQ(g.weights->type, QuantType::kInt);
  EXPECT_TRUE(g.weights->symmetric);
  EXPECT_EQ(g.weights->strategy, Strategy::kGroup);
  EXPECT_EQ(g.weights->group_size, 128);
  EXPECT_EQ(g.weights->dynamic, Dynamic::kStatic);
  EXPECT_EQ(g.weights->actorder, ActOrder::kWeight);
  EXPECT_EQ(g.weights->actorder_spelling, actorder_spelling);
  EXPECT_EQ(g.weights->observer, "memoryless_minmax");
}

TEST(RecipeFixture, W4A16Expanded) {
  RecipePlan plan = Load("w4a16.yaml");
  EXPECT_TRUE(plan.warnings.empty());
  EXPECT_FALSE(plan.smoothquant.has_value());
  ASSERT_TRUE(plan.quantization.has_value());
  const QuantizationPlan& q = *plan.quantization;
  EXPECT_EQ(q.algorithm, QuantAlgorithm::kGptq);
  EXPECT_EQ(q.ignore, std::vector<std::string>{"lm_head"});
  EXPECT_DOUBLE_EQ(q.dampening_frac, 0.01);
  EXPECT_EQ(q.block_size, 128);
  ASSERT_EQ(q.config_groups.size(), 1u);
  ASSERT_TRUE(q.config_groups.count("config_group"));
  // The group's own actorder "weight" stands (the modifier default only fills nulls).
  ExpectW4A16Weights(q.config_groups.at("config_group"), "weight");
}

TEST(RecipeFixture, W4A16DocVerbatimDropsUpdateSizeWithAWarning) {
  // The product doc's recipe passes update_size, which left llm-compressor in 0.4: like the
  // other removed keys it is dropped with a warning naming its line, and the plan is the
  // same as the fixture without it.
  auto plan = ParseRecipeFile(Fixture("w4a16_update_size.yaml"));
  ASSERT_TRUE(plan.ok()) << plan.status();
  ASSERT_EQ(plan->warnings.size(), 1u);
  EXPECT_NE(plan->warnings[0].find("w4a16_update_size.yaml:18: GPTQModifier: 'update_size'"), std::string::npos)
      << plan->warnings[0];
  auto reference = ParseRecipeFile(Fixture("w4a16.yaml"));
  ASSERT_TRUE(reference.ok());
  EXPECT_EQ(plan->quantization, reference->quantization);
}

TEST(RecipeFixture, W4A16Preset) {
  RecipePlan plan = Load("w4a16_preset.yaml");
  ASSERT_TRUE(plan.quantization.has_value());
  const QuantizationPlan& q = *plan.quantization;
  EXPECT_EQ(q.algorithm, QuantAlgorithm::kGptq);
  EXPECT_EQ(q.ignore, std::vector<std::string>{"lm_head"});
  ASSERT_EQ(q.config_groups.size(), 1u);
  ASSERT_TRUE(q.config_groups.count("group_0"));
  ExpectW4A16Weights(q.config_groups.at("group_0"), "static");  // the GPTQ default
}

TEST(RecipeFixture, Fp8WeightsActivationsKvCache) {
  RecipePlan plan = Load("fp8_kv.yaml");
  EXPECT_TRUE(plan.warnings.empty());
  EXPECT_FALSE(plan.smoothquant.has_value());
  ASSERT_TRUE(plan.quantization.has_value());
  const QuantizationPlan& q = *plan.quantization;
  EXPECT_EQ(q.algorithm, QuantAlgorithm::kRtn);
  EXPECT_EQ(q.actorder, std::nullopt);  // not a QuantizationModifier notion
  EXPECT_EQ(q.ignore, std::vector<std::string>{"lm_head"});
  EXPECT_TRUE(q.requires_calibration_data);  // static input scales and KV scales
  ASSERT_EQ(q.config_groups.size(), 1u);
  const QuantScheme& g = q.config_groups.at("group_0");
  EXPECT_EQ(g.targets, std::vector<std::string>{"Linear"});
  EXPECT_EQ(g.format, "float-quantized");
  for (const auto* args : {&g.weights, &g.input_activations}) {
    ASSERT_TRUE(args->has_value());
    EXPECT_EQ((*args)->num_bits, 8);
    EXPECT_EQ((*args)->type, QuantType::kFloat);
    EXPECT_TRUE((*args)->symmetric);
    EXPECT_EQ((*args)->strategy, Strategy::kTensor);
    EXPECT_EQ((*args)->dynamic, Dynamic::kStatic);
    EXPECT_EQ((*args)->actorder, ActOrder::kNone);      // RTN applies no actorder default
    EXPECT_EQ((*args)->observer, "memoryless_minmax");  // compressed-tensors' null default
  }
  ASSERT_TRUE(q.kv_cache_scheme.has_value());
  EXPECT_EQ(q.kv_cache_scheme->num_bits, 8);
  EXPECT_EQ(q.kv_cache_scheme->type, QuantType::kFloat);
  EXPECT_TRUE(q.kv_cache_scheme->symmetric);
  EXPECT_EQ(q.kv_cache_scheme->strategy, Strategy::kTensor);
  EXPECT_EQ(q.kv_cache_scheme->dynamic, Dynamic::kStatic);
  EXPECT_EQ(q.ToQuantizationConfig().kv_cache_scheme, q.kv_cache_scheme);
}

// ---- shapes from llm-compressor's own test recipes (algorithms doc §7.4)

TEST(RecipeFixture, SmoothQuantExplicitMappings) {
  RecipePlan plan = Load("smoothquant_mappings.yaml");
  ASSERT_TRUE(plan.smoothquant.has_value());
  const SmoothQuantPlan& sq = *plan.smoothquant;
  EXPECT_DOUBLE_EQ(sq.smoothing_strength, 0.6);
  EXPECT_FALSE(sq.default_mappings);
  std::vector<SmoothQuantMapping> want = {
      {{"re:.*q_proj$", "re:.*k_proj$", "re:.*v_proj$"}, "re:.*input_layernorm$"},
      {{"re:.*gate_proj$", "re:.*up_proj$"}, "re:.*post_attention_layernorm$"},
  };
  EXPECT_EQ(sq.mappings, want);
  EXPECT_EQ(sq.ignore, std::vector<std::string>{"re:.*layers\\.0\\..*"});
  ASSERT_TRUE(plan.quantization.has_value());
  const QuantizationPlan& q = *plan.quantization;
  EXPECT_EQ(q.actorder, std::nullopt);  // actorder: null switches the default off
  const QuantArgs& w = *q.config_groups.at("group_0").weights;
  EXPECT_EQ(w.strategy, Strategy::kChannel);
  EXPECT_EQ(w.actorder, ActOrder::kNone);
  EXPECT_EQ(w.actorder_spelling, "");
}

TEST(RecipeFixture, Int8StaticPerTensorActivations) {
  RecipePlan plan = Load("int8_static_tensor.yaml");
  ASSERT_TRUE(plan.smoothquant.has_value());
  EXPECT_DOUBLE_EQ(plan.smoothquant->smoothing_strength, 0.8);
  const QuantizationPlan& q = *plan.quantization;
  const QuantScheme& g = q.config_groups.at("group_0");
  EXPECT_EQ(g.weights->strategy, Strategy::kChannel);
  EXPECT_EQ(g.weights->actorder, ActOrder::kNone);
  EXPECT_EQ(g.input_activations->strategy, Strategy::kTensor);
  EXPECT_EQ(g.input_activations->dynamic, Dynamic::kStatic);
  EXPECT_EQ(g.input_activations->observer, "static_minmax");
  EXPECT_EQ(g.format, "int-quantized");
}

TEST(RecipeFixture, KvCacheOnly) {
  RecipePlan plan = Load("kv_cache_only.yaml");
  ASSERT_TRUE(plan.quantization.has_value());
  const QuantizationPlan& q = *plan.quantization;
  EXPECT_EQ(q.algorithm, QuantAlgorithm::kRtn);
  EXPECT_TRUE(q.config_groups.empty());  // llm-compressor's empty default group is dropped
  ASSERT_TRUE(q.kv_cache_scheme.has_value());
  EXPECT_EQ(q.kv_cache_scheme->type, QuantType::kFloat);
  EXPECT_EQ(q.kv_cache_scheme->observer, "static_minmax");
  EXPECT_TRUE(q.requires_calibration_data);
}

TEST(RecipeFixture, GptqActorderGroupWithDeprecatedKeys) {
  RecipePlan plan = Load("gptq_actorder_group.yaml");
  const QuantizationPlan& q = *plan.quantization;
  EXPECT_EQ(q.block_size, 64);
  EXPECT_DOUBLE_EQ(q.dampening_frac, 0.001);
  EXPECT_EQ(q.actorder, ActOrder::kGroup);
  const QuantArgs& attn = *q.config_groups.at("attn").weights;
  EXPECT_EQ(attn.actorder, ActOrder::kGroup);
  EXPECT_EQ(attn.actorder_spelling, "group");
  // "group" order needs group strategy: the channel group falls back to none, warned.
  const QuantArgs& mlp = *q.config_groups.at("mlp").weights;
  EXPECT_EQ(mlp.actorder, ActOrder::kNone);
  EXPECT_EQ(mlp.actorder_spelling, "");
  EXPECT_EQ(q.config_groups.at("attn").format, "pack-quantized");
  EXPECT_EQ(q.config_groups.at("mlp").format, "pack-quantized");  // int8 weights, 16-bit activations
  ASSERT_EQ(plan.warnings.size(), 3u);
  EXPECT_NE(plan.warnings[0].find(":4: oneshot_stage: 'run_type'"), std::string::npos) << plan.warnings[0];
  EXPECT_NE(plan.warnings[1].find(":7: GPTQModifier: 'sequential_update'"), std::string::npos)
      << plan.warnings[1];
  EXPECT_NE(
      plan.warnings[2].find(":9: GPTQModifier: actorder group needs group strategy; config group 'mlp'"),
      std::string::npos)
      << plan.warnings[2];
}

// ---- other accepted forms

TEST(Recipe, SchemeMappingGivesOneGroupPerPresetInOrder) {
  auto plan =
      ParseRecipe(Gptq("      scheme:\n"
                       "        W8A8: ['re:.*mlp\\..*']\n"
                       "        W4A16: 're:.*self_attn\\..*'\n"));
  ASSERT_TRUE(plan.ok()) << plan.status();
  const auto& groups = plan->quantization->config_groups;
  ASSERT_EQ(groups.size(), 2u);
  EXPECT_EQ(groups.at("group_0").targets, std::vector<std::string>{"re:.*mlp\\..*"});
  EXPECT_EQ(groups.at("group_0").weights->num_bits, 8);
  EXPECT_EQ(groups.at("group_1").targets, std::vector<std::string>{"re:.*self_attn\\..*"});
  EXPECT_EQ(groups.at("group_1").weights->num_bits, 4);
  EXPECT_EQ(plan->quantization->ToQuantizationConfig().format, "mixed-precision");
}

TEST(Recipe, JsonIsAccepted) {
  auto plan = ParseRecipe(
      R"({"quant_stage": {"quant_modifiers": {"QuantizationModifier": {"scheme": "FP8_DYNAMIC", "targets": ["Linear"], "ignore": ["lm_head"]}}}})");
  ASSERT_TRUE(plan.ok()) << plan.status();
  const QuantizationPlan& q = *plan->quantization;
  EXPECT_EQ(q.algorithm, QuantAlgorithm::kRtn);
  EXPECT_EQ(q.config_groups.at("group_0").weights->strategy, Strategy::kChannel);
  EXPECT_EQ(q.config_groups.at("group_0").input_activations->dynamic, Dynamic::kDynamic);
  EXPECT_FALSE(q.requires_calibration_data);  // data-free, as llm-compressor runs it
}

TEST(Recipe, ObserverOverridesApplyToEveryGroup) {
  auto plan =
      ParseRecipe(Gptq("      scheme: W8A8\n"
                       "      observer: {weights: mse}\n"));
  ASSERT_TRUE(plan.ok()) << plan.status();
  const QuantizationPlan& q = *plan->quantization;
  EXPECT_EQ(q.observer_overrides.weights, "mse");
  EXPECT_EQ(q.config_groups.at("group_0").weights->observer, "mse");
  EXPECT_EQ(q.config_groups.at("group_0").input_activations->observer, std::nullopt);
}

TEST(Recipe, CommonKeysAndNullArgsAreAccepted) {
  auto plan = ParseRecipe(
      "quant_stage:\n"
      "  quant_modifiers:\n"
      "    SmoothQuantModifier:\n"
      "    GPTQModifier: {scheme: W4A16, index: 1, group: quant, start: -1, end: null, update: 1.0,\n"
      "                   requires_calibration_data: true, offload_hessians: yes, targets: [Linear]}\n");
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_DOUBLE_EQ(plan->smoothquant->smoothing_strength, 0.5);
  EXPECT_TRUE(plan->quantization->offload_hessians);
}

TEST(Recipe, UnknownTopLevelKeysWarn) {
  auto plan = ParseRecipe("version: 1\nargs: {x: 1}\n" + Gptq("      scheme: W4A16\n").substr(0));
  ASSERT_TRUE(plan.ok()) << plan.status();
  ASSERT_EQ(plan->warnings.size(), 2u);
  EXPECT_NE(plan->warnings[0].find("recipe:1: top-level key 'version' ignored"), std::string::npos)
      << plan->warnings[0];
}

// ---- errors: each names the key and its line

TEST(RecipeError, UnknownKey) {
  ExpectError(Gptq("      scheme: W4A16\n"
                   "      dampening_fraction: 0.1\n"),
              5, "GPTQModifier: unknown key 'dampening_fraction'");
}

TEST(RecipeError, GptqOnlyKeysOnQuantizationModifier) {
  ExpectError(
      "s_stage:\n  m_modifiers:\n    QuantizationModifier:\n      scheme: W8A8\n      block_size: 128\n", 5,
      "QuantizationModifier: unknown key 'block_size'");
}

TEST(RecipeError, UnknownQuantArgsKey) {
  // QuantizationArgs in a recipe is extra="forbid".
  ExpectError(Gptq("      config_groups:\n"
                   "        g:\n"
                   "          targets: [Linear]\n"
                   "          weights: {num_bits: 4, bits: 4}\n"),
              7, "GPTQModifier.config_groups.g.weights: unknown key 'bits'");
}

TEST(RecipeError, WrongValueType) {
  ExpectError(Gptq("      scheme: W4A16\n"
                   "      block_size: big\n"),
              5, "GPTQModifier.block_size: expected an integer, got string 'big'");
  ExpectError(Gptq("      scheme: W4A16\n"
                   "      ignore: lm_head\n"),
              5, "GPTQModifier.ignore: expected a list of strings");
  ExpectError(Gptq("      scheme: W4A16\n"
                   "      dampening_frac: '0.01'\n"),
              5, "GPTQModifier.dampening_frac: expected a number, got string '0.01'");
  ExpectError(Gptq("      config_groups:\n"
                   "        g:\n"
                   "          targets: [Linear]\n"
                   "          weights:\n"
                   "            num_bits: four\n"),
              8, "num_bits must be an integer");
}

TEST(RecipeError, OutOfRangeIntegerDoesNotWrap) {
  // 2^32 + 8 would truncate to a valid 8 bits if it reached an int.
  ExpectError(Gptq("      config_groups:\n"
                   "        g:\n"
                   "          targets: [Linear]\n"
                   "          weights: {num_bits: 4294967304}\n"),
              7, "integer 4294967304 is out of range");
}

TEST(RecipeError, SchemeAndConfigGroupsAreExclusive) {
  ExpectError(Gptq("      scheme: W8A8\n"
                   "      config_groups:\n"
                   "        g: {targets: [Linear], weights: {num_bits: 8}}\n"),
              5, "GPTQModifier: 'scheme' and 'config_groups' are mutually exclusive");
}

TEST(RecipeError, TokenStrategyNeedsDynamic) {
  ExpectError(Gptq("      config_groups:\n"
                   "        g:\n"
                   "          targets: [Linear]\n"
                   "          weights: {num_bits: 8, strategy: channel}\n"
                   "          input_activations:\n"
                   "            num_bits: 8\n"
                   "            strategy: token\n"),
              10, "strategy token needs dynamic: true");
}

TEST(RecipeError, ActivationsCannotUseChannelStrategy) {
  ExpectError(Gptq("      config_groups:\n"
                   "        g:\n"
                   "          targets: [Linear]\n"
                   "          weights: {num_bits: 8, strategy: channel}\n"
                   "          input_activations: {num_bits: 8, strategy: channel}\n"),
              8, "input activations cannot use strategy channel");
}

TEST(RecipeError, SmoothingStrengthOutOfRange) {
  ExpectError("q_stage:\n  q_modifiers:\n    SmoothQuantModifier:\n      smoothing_strength: 1.5\n", 4,
              "SmoothQuantModifier.smoothing_strength: must be in [0, 1], got 1.5");
}

TEST(RecipeError, InvalidRegex) {
  ExpectError(Gptq("      scheme: W8A8\n"
                   "      ignore:\n"
                   "        - lm_head\n"
                   "        - 're:.*(mlp'\n"),
              7, "GPTQModifier.ignore: target 're:.*(mlp': invalid regular expression");
  ExpectError(
      "q_stage:\n  q_modifiers:\n    SmoothQuantModifier:\n"
      "      mappings: [[['re:[q_proj'], 're:.*norm']]\n",
      4, "re:[q_proj");
}

TEST(RecipeError, MalformedYaml) {
  ExpectError(Gptq("      scheme: W8A8\n"
                   "      ignore: [lm_head\n"),
              6, "malformed YAML");
  ExpectError("quant_stage:\n\tquant_modifiers: {}\n", 2, "malformed YAML");
}

TEST(RecipeError, EmptyRecipe) {
  for (const char* text : {"", "\n\n", "# only a comment\n", "~\n"}) {
    auto plan = ParseRecipe(text, "recipe.yaml");
    ASSERT_FALSE(plan.ok()) << text;
    EXPECT_NE(plan.status().message().find("empty recipe"), std::string::npos) << plan.status();
  }
  ExpectError("quant_stage:\n  quant_modifiers: {}\n", 0, "no modifiers");
}

TEST(RecipeError, ShapesLlmCompressorDoesNotRun) {
  // A bare modifier mapping or a list at the top level: llm-compressor ignores the first
  // (running nothing) and refuses the second.
  ExpectError("GPTQModifier:\n  scheme: W4A16\n", 1, "GPTQModifier: outside a stage");
  ExpectError("- GPTQModifier: {scheme: W4A16}\n", 1, "got a list");
  ExpectError("recipes/missing.yaml\n", 1, "got a scalar");
  ExpectError("a: 1\n---\nb: 2\n", 2, "more than one YAML document");  // at the "---"
}

TEST(RecipeError, UnsupportedOrUnknownModifier) {
  ExpectError("q_stage:\n  q_modifiers:\n    AWQModifier: {}\n", 3,
              "AWQModifier: modifier not supported by Lowbit");
  ExpectError("q_stage:\n  q_modifiers:\n    GPTQModifer: {}\n", 3, "GPTQModifer: unknown modifier");
  ExpectError("q_stage:\n  q_modifiers:\n    gptq: {}\n", 3, "gptq: unknown modifier");
}

TEST(RecipeError, TwoQuantizationModifiersAreRefused) {
  ExpectError(
      "q_stage:\n"
      "  q_modifiers:\n"
      "    QuantizationModifier: {scheme: W4A16, targets: ['re:.*self_attn.*']}\n"
      "    GPTQModifier: {scheme: W8A8, targets: ['re:.*mlp.*']}\n",
      4, "GPTQModifier: a second quantization modifier (QuantizationModifier is at line 3)");
  // Also across stages.
  ExpectError(
      "a_stage:\n  a_modifiers:\n    GPTQModifier: {scheme: W8A8}\n"
      "b_stage:\n  b_modifiers:\n    GPTQModifier: {scheme: W8A8}\n",
      6, "a second quantization modifier");
}

TEST(RecipeError, SmoothQuantMustComeFirst) {
  ExpectError("q_stage:\n  q_modifiers:\n    GPTQModifier: {scheme: W8A8}\n    SmoothQuantModifier: {}\n", 4,
              "SmoothQuantModifier: must come before GPTQModifier (line 3)");
}

TEST(RecipeError, DuplicateKey) {
  ExpectError(Gptq("      scheme: W8A8\n"
                   "      scheme: W4A16\n"),
              5, "GPTQModifier: duplicate key 'scheme'");
}

TEST(RecipeError, KvCacheMustBeFp8TensorStatic) {
  ExpectError(
      "q_stage:\n  q_modifiers:\n    QuantizationModifier:\n      kv_cache_scheme:\n"
      "        num_bits: 8\n        type: int\n",
      6, "QuantizationModifier.kv_cache_scheme: Lowbit writes FP8 KV caches only");
  ExpectError(
      "q_stage:\n  q_modifiers:\n    QuantizationModifier:\n"
      "      kv_cache_scheme: {type: float, strategy: channel}\n",
      4, "strategy must be tensor");
}

TEST(RecipeError, ActorderConflict) {
  ExpectError(Gptq("      actorder: static\n"
                   "      config_groups:\n"
                   "        g:\n"
                   "          targets: [Linear]\n"
                   "          weights: {num_bits: 4, group_size: 128, actorder: group}\n"),
              4, "GPTQModifier.actorder: conflicts with config group 'g' actorder 'group'");
  ExpectError(Gptq("      scheme: W4A16\n"
                   "      actorder: sideways\n"),
              5, "GPTQModifier.actorder: 'sideways'");
}

TEST(RecipeError, PresetAndObserverProblems) {
  ExpectError(Gptq("      scheme: NVFP4\n"), 4, "unknown preset scheme 'NVFP4'");
  ExpectError(Gptq("      scheme: W8A8\n"
                   "      weight_observer: mse\n"
                   "      observer: {input: minmax}\n"),
              6, "GPTQModifier.observer: cannot be combined with 'weight_observer' (line 5)");
  ExpectError(Gptq("      scheme: W8A8\n"
                   "      weight_observer: best\n"),
              5, "unknown observer 'best'");
}

TEST(RecipeError, GptqWithoutWeightsAndEmptyQuantizationModifier) {
  ExpectError(Gptq("      kv_cache_scheme: {num_bits: 8, type: float}\n"), 3, "quantizes no weights");
  ExpectError("q_stage:\n  q_modifiers:\n    QuantizationModifier: {ignore: [lm_head]}\n", 3,
              "needs 'scheme', 'config_groups' or 'kv_cache_scheme'");
}

TEST(RecipeError, TwoGroupsClaimingOneTarget) {
  ExpectError(Gptq("      scheme: {W8A8: [Linear], W4A16: Linear}\n"), 4,
              "target 'Linear' is claimed by config groups 'group_0' and 'group_1'");
}

TEST(RecipeError, MissingFile) {
  auto plan = ParseRecipeFile(Fixture("no_such_recipe.yaml"));
  EXPECT_FALSE(plan.ok());
}

TEST(RecipeRobustness, HostileInputsAreRefusedNotCrashed) {
  // Alias bomb: each level doubles the tree; converting it naively is 2^30 nodes.
  std::string bomb = "a0: &a0 {x: 1}\n";
  for (int i = 1; i < 30; ++i) {
    bomb += "a" + std::to_string(i) + ": &a" + std::to_string(i) + " [*a" + std::to_string(i - 1) + ", *a" +
            std::to_string(i - 1) + "]\n";
  }
  bomb += Gptq(
      "      config_groups:\n        g:\n          targets: [Linear]\n"
      "          weights: {num_bits: 8, observer_kwargs: {k: *a29}}\n");
  EXPECT_FALSE(ParseRecipe(bomb).ok());
  EXPECT_FALSE(ParseRecipe(std::string(100000, '[')).ok());
  // yaml-cpp 0.7's LoadAll spins forever on a stray comma; we must not call it that way.
  ExpectError("\n,\n", 2, "malformed YAML");
  ExpectError("# c\n     , symmetric: true\n", 2, "malformed YAML");
  const char kNul[] = "q_stage: {q_modifiers: {GPTQModifier: {num_bits: \0}}}";
  EXPECT_FALSE(ParseRecipe(std::string(kNul, sizeof(kNul) - 1)).ok());
  EXPECT_FALSE(
      ParseRecipe("q_stage:\n  q_modifiers:\n    GPTQModifier: {ignore: ['re:((a{1000}){1000}){1000}']}\n")
          .ok());
}

}  // namespace
}  // namespace lowbit
