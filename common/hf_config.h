// Fields of a Hugging Face config.json that both the calibrator (which loads the float model)
// and the runtime (which loads the quantized checkpoint) read.
#ifndef LOWBIT_COMMON_HF_CONFIG_H_
#define LOWBIT_COMMON_HF_CONFIG_H_

#include <optional>

#include "absl/status/statusor.h"
#include "common/dtype.h"
#include "nlohmann/json.hpp"

namespace lowbit {

// The checkpoint's storage dtype: "torch_dtype", or "dtype" (its name since transformers 4.56),
// the first one present and not null. nullopt when neither is there. INVALID_ARGUMENT naming the
// key for anything but "bfloat16", "float16" or "float32".
absl::StatusOr<std::optional<DType>> ConfigStorageDType(const nlohmann::json& config);

}  // namespace lowbit

#endif  // LOWBIT_COMMON_HF_CONFIG_H_
