#include "common/dtype.h"

#include <bit>
#include <cmath>

namespace lowbit {

std::string_view DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32: return "F32";
    case DType::kF16: return "F16";
    case DType::kBF16: return "BF16";
    case DType::kI8: return "I8";
    case DType::kU8: return "U8";
    case DType::kI32: return "I32";
    case DType::kI64: return "I64";
    case DType::kF8E4M3: return "F8_E4M3";
  }
  return "?";
}

std::optional<DType> ParseDType(std::string_view name) {
  for (DType d : {DType::kF32, DType::kF16, DType::kBF16, DType::kI8, DType::kU8, DType::kI32,
                  DType::kI64, DType::kF8E4M3}) {
    if (DTypeName(d) == name) return d;
  }
  return std::nullopt;
}

size_t DTypeSize(DType dtype) {
  switch (dtype) {
    case DType::kF32: case DType::kI32: return 4;
    case DType::kF16: case DType::kBF16: return 2;
    case DType::kI8: case DType::kU8: case DType::kF8E4M3: return 1;
    case DType::kI64: return 8;
  }
  return 0;
}

bool IsFloat(DType dtype) {
  return dtype == DType::kF32 || dtype == DType::kF16 || dtype == DType::kBF16 ||
         dtype == DType::kF8E4M3;
}

float Bf16ToFloat(uint16_t bits) { return std::bit_cast<float>(uint32_t{bits} << 16); }

uint16_t FloatToBf16(float value) {
  uint32_t u = std::bit_cast<uint32_t>(value);
  if (std::isnan(value)) return static_cast<uint16_t>((u >> 16) | 0x0040);  // keep it quiet
  uint32_t rounding = 0x7FFF + ((u >> 16) & 1);  // round half to even
  return static_cast<uint16_t>((u + rounding) >> 16);
}

float Fp16ToFloat(uint16_t bits) {
  uint32_t sign = uint32_t{bits & 0x8000u} << 16;
  uint32_t exp = (bits >> 10) & 0x1F;
  uint32_t man = bits & 0x3FF;
  float magnitude;
  if (exp == 0) {
    magnitude = std::ldexp(static_cast<float>(man), -24);
  } else if (exp == 31) {
    magnitude = man ? std::numeric_limits<float>::quiet_NaN() : INFINITY;
  } else {
    magnitude = std::ldexp(static_cast<float>(man | 0x400), static_cast<int>(exp) - 25);
  }
  return std::bit_cast<float>(std::bit_cast<uint32_t>(magnitude) | sign);
}

namespace {

// Rounds |value| (finite, non-negative) to a float format with `man_bits` explicit mantissa bits
// and minimum normal exponent `min_exp`, returning the rounded magnitude as a float. Subnormals
// share the quantum 2^(min_exp - man_bits). Round half to even via nearbyint in the default
// rounding mode.
float RoundMagnitude(float a, int man_bits, int min_exp) {
  if (a == 0.0f) return 0.0f;
  int e;
  std::frexp(a, &e);  // a = f * 2^e, f in [0.5, 1)
  int exp = std::max(e - 1, min_exp);
  float quantum = std::ldexp(1.0f, exp - man_bits);
  return std::nearbyint(a / quantum) * quantum;  // exact: a/quantum is a power-of-two scaling
}

}  // namespace

uint16_t FloatToFp16(float value) {
  uint16_t sign = (std::bit_cast<uint32_t>(value) >> 16) & 0x8000;
  if (std::isnan(value)) return sign | 0x7E00;
  float r = RoundMagnitude(std::fabs(value), 10, -14);
  if (std::isinf(value) || r >= 65536.0f) return sign | 0x7C00;
  if (r == 0.0f) return sign;
  int e;
  float f = std::frexp(r, &e);  // r = f * 2^e
  int exp = e - 1;
  if (exp < -14) {  // subnormal
    return sign | static_cast<uint16_t>(std::lround(std::ldexp(r, 24)));
  }
  uint16_t man = static_cast<uint16_t>(std::lround((f * 2.0f - 1.0f) * 1024.0f));
  return sign | static_cast<uint16_t>((exp + 15) << 10) | man;
}

float Fp8E4M3ToFloat(uint8_t bits) {
  bool negative = bits & 0x80;
  int exp = (bits >> 3) & 0xF;
  int man = bits & 0x7;
  float magnitude;
  if (exp == 0xF && man == 0x7) {
    magnitude = std::numeric_limits<float>::quiet_NaN();
  } else if (exp == 0) {
    magnitude = std::ldexp(static_cast<float>(man), -9);
  } else {
    magnitude = std::ldexp(static_cast<float>(8 + man), exp - 10);
  }
  return negative ? -magnitude : magnitude;
}

uint8_t FloatToFp8E4M3(float value) {
  uint8_t sign = (std::bit_cast<uint32_t>(value) >> 24) & 0x80;
  if (std::isnan(value)) return sign | 0x7F;
  float r = RoundMagnitude(std::fabs(value), 3, -6);
  if (!(r < kFp8E4M3Max)) return sign | 0x7E;  // saturate (infinities too)
  if (r == 0.0f) return sign;
  int e;
  float f = std::frexp(r, &e);
  int exp = e - 1;
  if (exp < -6) return sign | static_cast<uint8_t>(std::lround(std::ldexp(r, 9)));
  uint8_t man = static_cast<uint8_t>(std::lround((f * 2.0f - 1.0f) * 8.0f));
  return sign | static_cast<uint8_t>((exp + 7) << 3) | man;
}

float RoundToDType(float value, DType dtype) {
  switch (dtype) {
    case DType::kBF16: return Bf16ToFloat(FloatToBf16(value));
    case DType::kF16: return Fp16ToFloat(FloatToFp16(value));
    case DType::kF8E4M3: return Fp8E4M3ToFloat(FloatToFp8E4M3(value));
    default: return value;
  }
}

}  // namespace lowbit
