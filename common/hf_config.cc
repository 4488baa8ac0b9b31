#include "common/hf_config.h"

#include "absl/strings/str_cat.h"

namespace lowbit {

absl::StatusOr<std::optional<DType>> ConfigStorageDType(const nlohmann::json& config) {
  if (!config.is_object()) return std::optional<DType>();
  for (const char* key : {"torch_dtype", "dtype"}) {
    auto d = config.find(key);
    if (d == config.end() || d->is_null()) continue;
    const std::string v = d->is_string() ? d->get<std::string>() : "";
    if (v == "bfloat16") return std::optional<DType>(DType::kBF16);
    if (v == "float16") return std::optional<DType>(DType::kF16);
    if (v == "float32") return std::optional<DType>(DType::kF32);
    std::string shown = d->dump();
    if (shown.size() > 80) shown = shown.substr(0, 77) + "...";
    return absl::InvalidArgumentError(
        absl::StrCat("config.json: \"", key, "\" must be bfloat16, float16 or float32, got ", shown));
  }
  return std::optional<DType>();
}

}  // namespace lowbit
