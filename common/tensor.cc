#include "common/tensor.h"

#include <cstdlib>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace lowbit {

absl::StatusOr<int64_t> NumElements(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) return absl::InvalidArgumentError(absl::StrCat("negative dimension ", d, " in shape ", ShapeString(shape)));
    if (d != 0 && n > (int64_t{1} << 62) / d) {
      return absl::InvalidArgumentError(absl::StrCat("shape ", ShapeString(shape), " has too many elements"));
    }
    n *= d;
  }
  return n;
}

std::string ShapeString(const Shape& shape) { return absl::StrCat("[", absl::StrJoin(shape, ", "), "]"); }

Tensor Tensor::Zeros(DType dtype, Shape shape) {
  Tensor t;
  t.dtype_ = dtype;
  t.numel_ = NumElements(shape).value();
  t.shape_ = std::move(shape);
  t.owned_ = std::make_shared<std::vector<uint8_t>>(t.nbytes());
  t.data_ = t.owned_->data();
  return t;
}

Tensor Tensor::FromBytes(DType dtype, Shape shape, std::span<const uint8_t> bytes) {
  Tensor t = Zeros(dtype, std::move(shape));
  if (bytes.size() != t.nbytes()) std::abort();
  if (!bytes.empty()) std::memcpy(t.owned_->data(), bytes.data(), bytes.size());
  return t;
}

Tensor Tensor::View(DType dtype, Shape shape, const uint8_t* data, std::shared_ptr<const void> keep_alive) {
  Tensor t;
  t.dtype_ = dtype;
  t.numel_ = NumElements(shape).value();
  t.shape_ = std::move(shape);
  t.data_ = data;
  t.keep_alive_ = std::move(keep_alive);
  return t;
}

Tensor Tensor::FromFloats(std::span<const float> values, Shape shape, DType dtype) {
  Tensor t = Zeros(dtype, std::move(shape));
  if (static_cast<int64_t>(values.size()) != t.numel_) std::abort();
  uint8_t* out = t.owned_->data();
  for (size_t i = 0; i < values.size(); ++i) {
    float v = values[i];
    switch (dtype) {
      case DType::kF32: std::memcpy(out + 4 * i, &v, 4); break;
      case DType::kBF16: { uint16_t b = FloatToBf16(v); std::memcpy(out + 2 * i, &b, 2); break; }
      case DType::kF16: { uint16_t b = FloatToFp16(v); std::memcpy(out + 2 * i, &b, 2); break; }
      case DType::kF8E4M3: out[i] = FloatToFp8E4M3(v); break;
      default: std::abort();  // integer tensors are built from codes, not floats
    }
  }
  return t;
}

std::span<uint8_t> Tensor::mutable_bytes() {
  if (!owned_) std::abort();
  return {owned_->data(), nbytes()};
}

std::vector<float> Tensor::ToFloats() const {
  std::vector<float> out(numel_);
  for (int64_t i = 0; i < numel_; ++i) {
    const uint8_t* p = data_ + i * DTypeSize(dtype_);
    switch (dtype_) {
      case DType::kF32: std::memcpy(&out[i], p, 4); break;
      case DType::kBF16: { uint16_t b; std::memcpy(&b, p, 2); out[i] = Bf16ToFloat(b); break; }
      case DType::kF16: { uint16_t b; std::memcpy(&b, p, 2); out[i] = Fp16ToFloat(b); break; }
      case DType::kF8E4M3: out[i] = Fp8E4M3ToFloat(*p); break;
      case DType::kI8: out[i] = static_cast<int8_t>(*p); break;
      case DType::kU8: out[i] = *p; break;
      case DType::kI32: { int32_t v; std::memcpy(&v, p, 4); out[i] = static_cast<float>(v); break; }
      case DType::kI64: { int64_t v; std::memcpy(&v, p, 8); out[i] = static_cast<float>(v); break; }
    }
  }
  return out;
}

Tensor Tensor::Copy() const { return FromBytes(dtype_, shape_, bytes()); }

}  // namespace lowbit
