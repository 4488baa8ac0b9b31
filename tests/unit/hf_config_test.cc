// ConfigStorageDType: the key precedence transformers uses (torch_dtype, then dtype since 4.56),
// null as absent, and a clear refusal of anything else.
#include "common/hf_config.h"

#include "gtest/gtest.h"

namespace lowbit {
namespace {

using nlohmann::json;

std::optional<DType> Parse(const json& j) {
  auto d = ConfigStorageDType(j);
  EXPECT_TRUE(d.ok()) << d.status();
  return d.ok() ? *d : std::nullopt;
}

TEST(ConfigStorageDType, ReadsEitherKey) {
  EXPECT_EQ(Parse({{"torch_dtype", "bfloat16"}}), DType::kBF16);
  EXPECT_EQ(Parse({{"dtype", "float16"}}), DType::kF16);
  EXPECT_EQ(Parse({{"dtype", "float32"}}), DType::kF32);
  EXPECT_EQ(Parse({{"torch_dtype", "float16"}, {"dtype", "bfloat16"}}), DType::kF16);  // first key wins
  EXPECT_EQ(Parse({{"torch_dtype", nullptr}, {"dtype", "float16"}}), DType::kF16);      // null = absent
  EXPECT_EQ(Parse({{"hidden_size", 4096}}), std::nullopt);
  EXPECT_EQ(Parse(json::array()), std::nullopt);
}

TEST(ConfigStorageDType, RefusesOtherValuesNamingTheKey) {
  for (const json& j : {json{{"dtype", "int8"}}, json{{"torch_dtype", 16}}, json{{"dtype", ""}}}) {
    auto d = ConfigStorageDType(j);
    ASSERT_FALSE(d.ok()) << j.dump();
    EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument);
    const std::string key = j.begin().key();
    EXPECT_NE(d.status().message().find("\"" + key + "\""), std::string::npos) << d.status();
  }
}

}  // namespace
}  // namespace lowbit
