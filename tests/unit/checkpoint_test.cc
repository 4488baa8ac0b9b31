// Tensors written per quantized Linear, per preset, against the format table
// (shared/reference/compressed-tensors-format.md §4), plus config.json round trips.
#include "common/checkpoint.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>

#include "gtest/gtest.h"

namespace lowbit {
namespace {

namespace fs = std::filesystem;

Tensor RandomWeight(int64_t n, int64_t k, DType dtype, uint32_t seed = 5) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, 0.05f);
  std::vector<float> v(n * k);
  for (auto& x : v) x = d(rng);
  return Tensor::FromFloats(v, {n, k}, dtype);
}

struct Expected {
  DType dtype;
  Shape shape;
};

std::map<std::string, Expected> Encode(const std::string& preset, int64_t n, int64_t k, DType dtype) {
  auto scheme = PresetScheme(preset, {"Linear"});
  EXPECT_TRUE(scheme.ok());
  auto q = QuantizeLinearRtn("m.q_proj", RandomWeight(n, k, dtype), *scheme->weights, ScaleDTypeFor(dtype));
  EXPECT_TRUE(q.ok()) << q.status();
  auto tensors = EncodeLinear(*q, *scheme->format, ScaleDTypeFor(dtype));
  EXPECT_TRUE(tensors.ok()) << tensors.status();
  std::map<std::string, Expected> out;
  for (const auto& t : *tensors) out[t.name] = {t.tensor.dtype(), t.tensor.shape()};
  return out;
}

void ExpectTensors(const std::map<std::string, Expected>& got, const std::map<std::string, Expected>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (const auto& [name, e] : want) {
    auto it = got.find(name);
    ASSERT_NE(it, got.end()) << name;
    EXPECT_EQ(it->second.dtype, e.dtype) << name;
    EXPECT_EQ(it->second.shape, e.shape) << name;
  }
}

TEST(EncodeLinear, W8A8IsInt8WeightAndChannelScale) {
  ExpectTensors(Encode("W8A8", 48, 256, DType::kBF16),
                {{"m.q_proj.weight", {DType::kI8, {48, 256}}}, {"m.q_proj.weight_scale", {DType::kBF16, {48, 1}}}});
}

TEST(EncodeLinear, W4A16PacksEightPerWord) {
  ExpectTensors(Encode("W4A16", 48, 256, DType::kBF16),
                {{"m.q_proj.weight_packed", {DType::kI32, {48, 32}}},
                 {"m.q_proj.weight_scale", {DType::kBF16, {48, 2}}},
                 {"m.q_proj.weight_shape", {DType::kI64, {2}}}});
}

TEST(EncodeLinear, W4A16AsymAddsPackedZeroPoints) {
  ExpectTensors(Encode("W4A16_ASYM", 20, 256, DType::kF16),
                {{"m.q_proj.weight_packed", {DType::kI32, {20, 32}}},
                 {"m.q_proj.weight_scale", {DType::kF16, {20, 2}}},
                 {"m.q_proj.weight_shape", {DType::kI64, {2}}},
                 {"m.q_proj.weight_zero_point", {DType::kI32, {3, 2}}}});  // ceil(20/8) = 3
}

TEST(EncodeLinear, W8A16PacksFourPerWord) {
  ExpectTensors(Encode("W8A16", 16, 256, DType::kBF16),
                {{"m.q_proj.weight_packed", {DType::kI32, {16, 64}}},
                 {"m.q_proj.weight_scale", {DType::kBF16, {16, 2}}},
                 {"m.q_proj.weight_shape", {DType::kI64, {2}}}});
}

TEST(EncodeLinear, Fp8DynamicIsFp8WeightAndChannelScale) {
  ExpectTensors(Encode("FP8_DYNAMIC", 16, 128, DType::kBF16),
                {{"m.q_proj.weight", {DType::kF8E4M3, {16, 128}}}, {"m.q_proj.weight_scale", {DType::kBF16, {16, 1}}}});
}

TEST(EncodeLinear, Fp8StaticCarriesInputScale) {
  auto scheme = PresetScheme("FP8", {"Linear"});
  ASSERT_TRUE(scheme.ok());
  auto q = QuantizeLinearRtn("m.o_proj", RandomWeight(16, 128, DType::kBF16), *scheme->weights, DType::kBF16);
  ASSERT_TRUE(q.ok());
  q->input_scale = 0.25f;
  auto t = EncodeLinear(*q, "float-quantized", DType::kBF16);
  ASSERT_TRUE(t.ok());
  std::map<std::string, Shape> shapes;
  for (const auto& x : *t) shapes[x.name] = x.tensor.shape();
  EXPECT_EQ(shapes["m.o_proj.weight_scale"], Shape{1});
  EXPECT_EQ(shapes["m.o_proj.input_scale"], Shape{1});
}

TEST(EncodeLinear, DequantizedWeightsWithinHalfAStep) {
  for (const char* preset : {"W8A8", "W4A16", "W4A16_ASYM", "W8A16"}) {
    auto scheme = PresetScheme(preset, {"Linear"});
    Tensor w = RandomWeight(8, 256, DType::kF32, 11);
    auto q = QuantizeLinearRtn("m", w, *scheme->weights, DType::kF32);
    ASSERT_TRUE(q.ok());
    std::vector<float> orig = w.ToFloats(), back = DequantizeLinear(*q);
    for (int64_t r = 0; r < 8; ++r) {
      for (int64_t c = 0; c < 256; ++c) {
        QParam p = q->qparams.at(r, q->qparams.groups == 1 ? 0 : c / q->qparams.group_size);
        float bound = (scheme->weights->symmetric ? 0.5f : 1.0f) * p.scale * (1 + 1e-4f);
        ASSERT_LE(std::fabs(orig[r * 256 + c] - back[r * 256 + c]), bound) << preset << " " << r << "," << c;
      }
    }
  }
}

TEST(EncodeLinear, RefusesGroupSizeThatDoesNotDivideK) {
  auto scheme = PresetScheme("W4A16", {"Linear"});
  auto q = QuantizeLinearRtn("m.down_proj", RandomWeight(8, 200, DType::kBF16), *scheme->weights, DType::kBF16);
  ASSERT_FALSE(q.ok());
  EXPECT_NE(q.status().message().find("not a multiple of group_size 128"), std::string::npos);
}

TEST(QuantizationConfig, PresetConfigMatchesTheFormatNotes) {
  auto scheme = PresetScheme("W8A8", {"Linear"});
  QuantizationConfig c = MakeQuantizationConfig({{"group_0", *scheme}}, {"lm_head"}, std::nullopt);
  nlohmann::json j = QuantizationConfigToJson(c);
  EXPECT_EQ(j["quant_method"], "compressed-tensors");
  EXPECT_EQ(j["format"], "int-quantized");
  EXPECT_EQ(j["quantization_status"], "compressed");
  EXPECT_EQ(j["ignore"], nlohmann::json({"lm_head"}));
  const auto& g = j["config_groups"]["group_0"];
  EXPECT_EQ(g["weights"]["strategy"], "channel");
  EXPECT_EQ(g["weights"]["num_bits"], 8);
  EXPECT_EQ(g["weights"]["dynamic"], false);
  EXPECT_EQ(g["input_activations"]["strategy"], "token");
  EXPECT_EQ(g["input_activations"]["dynamic"], true);
  EXPECT_TRUE(g["input_activations"]["observer"].is_null());
  EXPECT_FALSE(g["weights"].contains("scale_dtype"));
  EXPECT_FALSE(g["weights"].contains("zp_dtype"));
  auto back = QuantizationConfigFromJson(j);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, c);
}

TEST(QuantizationConfig, FormatsPerPreset) {
  std::map<std::string, std::string> want = {{"W8A8", "int-quantized"},  {"W8A16", "pack-quantized"},
                                             {"W4A16", "pack-quantized"}, {"W4A16_ASYM", "pack-quantized"},
                                             {"FP8", "float-quantized"},  {"FP8_DYNAMIC", "float-quantized"}};
  for (const auto& [preset, format] : want) {
    auto s = PresetScheme(preset, {"Linear"});
    ASSERT_TRUE(s.ok());
    EXPECT_EQ(s->format, format) << preset;
  }
  EXPECT_FALSE(PresetScheme("W3A99", {"Linear"}).ok());
}

TEST(QuantizationConfig, ReaderAcceptsUnknownKeysAndRejectsBadValues) {
  nlohmann::json args = {{"num_bits", 4}, {"type", "int"}, {"symmetric", true}, {"strategy", "group"},
                         {"group_size", 128}, {"scale_dtype", nullptr}, {"brand_new_field", 1}};
  auto a = QuantArgsFromJson(args);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->group_size, 128);
  args["strategy"] = "token";  // token needs dynamic
  EXPECT_FALSE(QuantArgsFromJson(args).ok());
  nlohmann::json wrapped = args;
  wrapped["strategy"] = "group";
  wrapped["num_bits"] = 4294967304LL;  // 2^32 + 8 must not wrap to 8
  EXPECT_NE(QuantArgsFromJson(wrapped).status().message().find("num_bits"), std::string::npos);
  wrapped["num_bits"] = 4;
  wrapped["strategy"] = "channel";
  wrapped["group_size"] = 0;
  EXPECT_FALSE(QuantArgsFromJson(wrapped).ok());
  args["strategy"] = "diagonal";
  EXPECT_NE(QuantArgsFromJson(args).status().message().find("diagonal"), std::string::npos);
}

TEST(WriteCheckpoint, AtomicDirectoryWithCopiedFiles) {
  fs::path root = fs::temp_directory_path() / ("lowbit_ckpt_" + std::to_string(::getpid()));
  fs::remove_all(root);
  fs::create_directories(root / "src");
  std::ofstream(root / "src" / "config.json") << R"({"model_type": "llama", "hidden_size": 8})";
  std::ofstream(root / "src" / "tokenizer.json") << "{}";
  std::ofstream(root / "src" / "model.safetensors") << "not copied";
  CheckpointSpec spec;
  spec.source_dir = (root / "src").string();
  spec.out_dir = (root / "out").string();
  spec.quantization = MakeQuantizationConfig({{"group_0", *PresetScheme("W4A16", {"Linear"})}}, {"lm_head"}, std::nullopt);
  spec.tensors.push_back({"x", Tensor::Zeros(DType::kF32, {2})});
  spec.recipe_yaml = "quant_stage: {}\n";
  ASSERT_TRUE(WriteCheckpoint(spec).ok());
  ASSERT_TRUE(WriteCheckpoint(spec).ok());  // replacing an existing checkpoint works too
  std::ifstream in(root / "out" / "config.json");
  nlohmann::json config = nlohmann::json::parse(in);
  EXPECT_EQ(config["hidden_size"], 8);
  EXPECT_EQ(config["quantization_config"]["format"], "pack-quantized");
  EXPECT_TRUE(fs::exists(root / "out" / "tokenizer.json"));
  EXPECT_TRUE(fs::exists(root / "out" / "recipe.yaml"));
  auto st = SafetensorsModel::Open((root / "out").string());
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_EQ((*st)->names(), std::vector<std::string>{"x"});
  for (const auto& e : fs::directory_iterator(root)) {
    EXPECT_TRUE(e.path().filename() == "src" || e.path().filename() == "out") << e.path();
  }
  fs::remove_all(root);
}

}  // namespace
}  // namespace lowbit
