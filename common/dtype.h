// Element types Lowbit moves around, their safetensors names, and conversions between
// float32 and the 16- and 8-bit float formats (bf16, fp16, FP8 E4M3FN).
//
// FP8 E4M3FN is the OCP format (torch.float8_e4m3fn): 1 sign, 4 exponent (bias 7), 3 mantissa
// bits, no infinities, S.1111.111 is NaN, largest finite 448. Float -> FP8 rounds to nearest
// even and saturates to +-448 (CUDA's __nv_fp8_e4m3 conversion with __NV_SATFINITE); NaN stays
// NaN (0x7F with the sign kept).
#ifndef LOWBIT_COMMON_DTYPE_H_
#define LOWBIT_COMMON_DTYPE_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace lowbit {

enum class DType : uint8_t { kF32, kF16, kBF16, kI8, kU8, kI32, kI64, kF8E4M3 };

// The safetensors dtype string ("F32", "BF16", "F8_E4M3", ...).
std::string_view DTypeName(DType dtype);
// Parses a safetensors dtype string; nullopt for a string Lowbit does not handle.
std::optional<DType> ParseDType(std::string_view name);
// Bytes per element.
size_t DTypeSize(DType dtype);
bool IsFloat(DType dtype);

inline constexpr float kFp8E4M3Max = 448.0f;

float Bf16ToFloat(uint16_t bits);
// Round to nearest even; NaN stays NaN (quiet), infinities stay infinities.
uint16_t FloatToBf16(float value);
float Fp16ToFloat(uint16_t bits);
// Round to nearest even; overflow goes to infinity as IEEE binary16 does.
uint16_t FloatToFp16(float value);
float Fp8E4M3ToFloat(uint8_t bits);
// Round to nearest even, saturate to +-448, NaN -> NaN.
uint8_t FloatToFp8E4M3(float value);

// Rounds a float to the nearest value representable in `dtype` (a float dtype).
float RoundToDType(float value, DType dtype);

}  // namespace lowbit

#endif  // LOWBIT_COMMON_DTYPE_H_
