// A host tensor: dtype, row-major shape, and bytes that are either owned or a read-only view
// into memory kept alive by someone else (a memory-mapped safetensors file).
#ifndef LOWBIT_COMMON_TENSOR_H_
#define LOWBIT_COMMON_TENSOR_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/dtype.h"

namespace lowbit {

using Shape = std::vector<int64_t>;

// Number of elements of `shape`, or an error for a negative dimension or overflow past 2^62.
absl::StatusOr<int64_t> NumElements(const Shape& shape);
std::string ShapeString(const Shape& shape);

class Tensor {
 public:
  Tensor() = default;
  // An owning tensor filled with zero bytes. The shape must be valid (see NumElements).
  static Tensor Zeros(DType dtype, Shape shape);
  // An owning tensor that copies `bytes` (which must be numel * DTypeSize bytes).
  static Tensor FromBytes(DType dtype, Shape shape, std::span<const uint8_t> bytes);
  // A read-only view of `data`; `keep_alive` owns the memory behind it.
  static Tensor View(DType dtype, Shape shape, const uint8_t* data,
                     std::shared_ptr<const void> keep_alive);
  // Converts floats to `dtype` (a float dtype; FP8 saturates) as an owning tensor.
  static Tensor FromFloats(std::span<const float> values, Shape shape, DType dtype);

  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  int64_t dim(int i) const { return shape_[i]; }
  int64_t numel() const { return numel_; }
  size_t nbytes() const { return static_cast<size_t>(numel_) * DTypeSize(dtype_); }

  std::span<const uint8_t> bytes() const { return {data_, nbytes()}; }
  // Writable bytes; only for owning tensors (a view is read-only, and this aborts).
  std::span<uint8_t> mutable_bytes();
  template <typename T>
  const T* data() const { return reinterpret_cast<const T*>(data_); }
  template <typename T>
  T* mutable_data() { return reinterpret_cast<T*>(mutable_bytes().data()); }

  // Every element as float (float dtypes decoded, integers converted).
  std::vector<float> ToFloats() const;
  // Same shape and dtype, owning its bytes.
  Tensor Copy() const;

 private:
  DType dtype_ = DType::kF32;
  Shape shape_;
  int64_t numel_ = 0;
  const uint8_t* data_ = nullptr;
  std::shared_ptr<std::vector<uint8_t>> owned_;
  std::shared_ptr<const void> keep_alive_;
};

}  // namespace lowbit

#endif  // LOWBIT_COMMON_TENSOR_H_
