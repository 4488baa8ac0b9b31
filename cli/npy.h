// NumPy .npy files (format 1.0 / 2.0, little-endian, C order) for `lowbit gemm` inputs and
// outputs: <f4, <f2, and bfloat16 as ml_dtypes writes it ('<V2' is not standard, so bf16 is
// written as <f4 after conversion and read from <f2/<f4 only).
#ifndef LOWBIT_CLI_NPY_H_
#define LOWBIT_CLI_NPY_H_

#include <string>

#include "absl/status/statusor.h"
#include "common/tensor.h"

namespace lowbit::cli {

// Reads a 2-D or 1-D float32 / float16 array. Errors name the file and what is wrong with it.
absl::StatusOr<Tensor> ReadNpy(const std::string& path);
// Writes F32 or F16 as-is; BF16 is widened to float32 (NumPy has no bfloat16).
absl::Status WriteNpy(const std::string& path, const Tensor& tensor);

}  // namespace lowbit::cli

#endif  // LOWBIT_CLI_NPY_H_
