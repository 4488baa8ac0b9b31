#include "kernels/validate.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>

#include "common/dtype.h"

namespace lowbit::kernels {

namespace {

std::string S(int64_t v) { return std::to_string(v); }
std::string D(DType d) { return std::string(DTypeName(d)); }

bool IsActFloat(DType d) { return d == DType::kF32 || d == DType::kF16 || d == DType::kBF16; }

Status ValidateScaleView(const char* what, const ScaleView& s, int64_t expect_a, int64_t expect_b) {
  if (s.data == nullptr) return InvalidArgument(std::string(what) + ": scale is null");
  if (!IsActFloat(s.dtype))
    return InvalidArgument(std::string(what) + ": scale dtype " + D(s.dtype) + " is not F32, F16 or BF16");
  if (s.count != expect_a && s.count != expect_b)
    return InvalidArgument(std::string(what) + ": scale has " + S(s.count) + " elements, expected " + S(expect_a) +
                           (expect_a != expect_b ? " or " + S(expect_b) : std::string()));
  return Status::Ok();
}

}  // namespace

std::string Status::ToString() const {
  static const char* kNames[] = {"OK", "INVALID_ARGUMENT", "UNIMPLEMENTED", "UNAVAILABLE", "INTERNAL", "FAILED_PRECONDITION"};
  if (ok()) return "OK";
  return std::string(kNames[static_cast<int>(code_)]) + ": " + message_;
}

size_t ActivationBytes(DType dtype, int64_t m, int64_t k) {
  if (m < 1 || k < 1) return 0;  // not a shape: nothing to hold (callers refuse it with a message)
  return static_cast<size_t>(m) * static_cast<size_t>(k) * DTypeSize(dtype);
}

Status ValidateQuantize(const char* op, DType x_dtype, const void* x, int64_t m, int64_t k, const void* q,
                        const void* scale_out, bool needs_scale_out) {
  if (!IsActFloat(x_dtype))
    return InvalidArgument(std::string(op) + ": activation dtype " + D(x_dtype) + " is not F32, F16 or BF16");
  if (m < 1 || k < 1) return InvalidArgument(std::string(op) + ": shape [" + S(m) + ", " + S(k) + "] must be ≥ 1");
  if (x == nullptr || q == nullptr) return InvalidArgument(std::string(op) + ": null input or output");
  if (needs_scale_out && scale_out == nullptr) return InvalidArgument(std::string(op) + ": null scale output");
  return Status::Ok();
}

Status ValidateInt8Source(const Int8WeightSource& s) {
  if (s.weight == nullptr) return InvalidArgument("int8 weight: weight is null");
  if (s.n < 1 || s.k < 1) return InvalidArgument("int8 weight: shape [" + S(s.n) + ", " + S(s.k) + "] must be ≥ 1");
  return ValidateScaleView("int8 weight", s.scale, s.n, 1);
}

Status ValidateFp8Source(const Fp8WeightSource& s) {
  if (s.weight == nullptr) return InvalidArgument("fp8 weight: weight is null");
  if (s.n < 1 || s.k < 1) return InvalidArgument("fp8 weight: shape [" + S(s.n) + ", " + S(s.k) + "] must be ≥ 1");
  return ValidateScaleView("fp8 weight", s.scale, s.n, 1);
}

int64_t Int4GroupSize(int64_t k, int64_t group_size) { return group_size <= 0 || group_size >= k ? k : group_size; }
int64_t Int4Groups(int64_t k, int64_t group_size) {
  int64_t gs = Int4GroupSize(k, group_size);
  return (k + gs - 1) / gs;
}

Status ValidateInt4Source(const Int4WeightSource& s) {
  if (s.weight_packed == nullptr) return InvalidArgument("int4 weight: weight_packed is null");
  if (s.n < 1 || s.k < 1) return InvalidArgument("int4 weight: shape [" + S(s.n) + ", " + S(s.k) + "] must be ≥ 1");
  if (s.group_size < 0) return InvalidArgument("int4 weight: group_size " + S(s.group_size) + " is negative");
  int64_t g = Int4Groups(s.k, s.group_size);
  LOWBIT_KRETURN_IF_ERROR(ValidateScaleView("int4 weight", s.scale, s.n * g, s.n * g));
  if (s.g_idx != nullptr) {
    if (Int4GroupSize(s.k, s.group_size) == s.k)
      return InvalidArgument("int4 weight: g_idx given for a per-channel weight (activation order needs groups)");
    for (int64_t i = 0; i < s.k; ++i)
      if (s.g_idx[i] < 0 || s.g_idx[i] >= g)
        return InvalidArgument("int4 weight: g_idx[" + S(i) + "] = " + S(s.g_idx[i]) + " is outside [0, " + S(g) + ")");
  }
  return Status::Ok();
}

namespace {

// Whether [a, a + a_bytes) and [b, b + b_bytes) share a byte.
bool Overlap(const void* a, size_t a_bytes, const void* b, size_t b_bytes) {
  const auto pa = reinterpret_cast<uintptr_t>(a), pb = reinterpret_cast<uintptr_t>(b);
  return a != nullptr && b != nullptr && a_bytes > 0 && b_bytes > 0 && pa < pb + b_bytes && pb < pa + a_bytes;
}

}  // namespace

Status ValidateStaticScale(const char* op, float scale) {
  if (scale > 0.0f && std::isfinite(scale) && std::isfinite(1.0f / scale)) return Status::Ok();
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%g", static_cast<double>(scale));
  return InvalidArgument(std::string(op) + ": scale " + buf + " must be finite and > 0 with a finite inverse");
}

Status ValidatePrepareOut(const std::string& backend, const void* out) {
  return out == nullptr ? InvalidArgument(backend + ": Prepare* was given a null output pointer") : Status::Ok();
}

Status ValidateGemm(const char* op, const GemmArgs& a, WeightKind kind, const std::string& backend, int64_t max_m) {
  std::string o(op);
  if (a.w == nullptr) return InvalidArgument(o + ": no prepared weight");
  if (a.w->kind() != kind) return InvalidArgument(o + ": the prepared weight is of another kind");
  if (a.w->backend() != backend)
    return InvalidArgument(o + ": the weight was prepared by backend '" + a.w->backend() + "', not '" + backend + "'");
  if (a.m < 1) return InvalidArgument(o + ": M = " + S(a.m) + " must be ≥ 1");
  if (a.x == nullptr || a.y == nullptr) return InvalidArgument(o + ": null activation or output");
  const int64_t n = a.w->n();
  if (kind == WeightKind::kInt4) {
    if (a.x_dtype != DType::kF16 && a.x_dtype != DType::kBF16)
      return InvalidArgument(o + ": activation dtype " + D(a.x_dtype) + " is not F16 or BF16");
    if (a.y_dtype != a.x_dtype)
      return InvalidArgument(o + ": output dtype " + D(a.y_dtype) + " must equal the activation dtype " + D(a.x_dtype));
  } else {
    DType want = kind == WeightKind::kInt8 ? DType::kI8 : DType::kF8E4M3;
    if (a.x_dtype != want) return InvalidArgument(o + ": activation dtype " + D(a.x_dtype) + " must be " + D(want));
    if (!IsActFloat(a.y_dtype))
      return InvalidArgument(o + ": output dtype " + D(a.y_dtype) + " is not F32, F16 or BF16");
    if (a.x_scale == nullptr) return InvalidArgument(o + ": x_scale is null");
    if (a.x_scale_count != 1 && a.x_scale_count != a.m)
      return InvalidArgument(o + ": x_scale has " + S(a.x_scale_count) + " elements, expected 1 or M = " + S(a.m));
  }
  if (max_m > 0 && a.m > max_m)
    return InvalidArgument(o + ": M = " + S(a.m) + " exceeds " + S(max_m) + " on " + backend);
  const size_t y_bytes = ActivationBytes(a.y_dtype, a.m, n);
  const size_t x_bytes = ActivationBytes(a.x_dtype, a.m, a.w->k());
  const size_t xs_bytes = kind == WeightKind::kInt4 ? 0 : static_cast<size_t>(a.x_scale_count) * sizeof(float);
  if (Overlap(a.y, y_bytes, a.x, x_bytes) || Overlap(a.y, y_bytes, a.x_scale, xs_bytes) ||
      Overlap(a.y, y_bytes, a.bias, static_cast<size_t>(n) * sizeof(float)))
    return InvalidArgument(o +
                           ": the output buffer overlaps the activations, their scales or the bias (in-place "
                           "GEMMs are not supported)");
  return Status::Ok();
}

std::vector<float> ScalesToFloat(const ScaleView& s) {
  std::vector<float> out(s.count);
  for (int64_t i = 0; i < s.count; ++i) {
    switch (s.dtype) {
      case DType::kF32:
        out[i] = static_cast<const float*>(s.data)[i];
        break;
      case DType::kF16:
        out[i] = Fp16ToFloat(static_cast<const uint16_t*>(s.data)[i]);
        break;
      case DType::kBF16:
        out[i] = Bf16ToFloat(static_cast<const uint16_t*>(s.data)[i]);
        break;
      default:
        out[i] = 0.0f;
    }
  }
  return out;
}

Status Int4ActOrderPermutation(const Int4WeightSource& s, std::vector<int32_t>* perm) {
  perm->clear();
  if (s.g_idx == nullptr) return Status::Ok();
  const int64_t gs = Int4GroupSize(s.k, s.group_size);
  bool identity = true;
  for (int64_t c = 0; c < s.k && identity; ++c) identity = s.g_idx[c] == c / gs;
  if (identity) return Status::Ok();
  perm->resize(s.k);
  std::iota(perm->begin(), perm->end(), 0);
  std::stable_sort(perm->begin(), perm->end(), [&](int32_t a, int32_t b) { return s.g_idx[a] < s.g_idx[b]; });
  for (int64_t j = 0; j < s.k; ++j)
    if (s.g_idx[(*perm)[j]] != j / gs)
      return InvalidArgument("int4 weight: g_idx does not give every group exactly group_size = " + S(gs) +
                             " columns (group " + S(s.g_idx[(*perm)[j]]) + " at sorted position " + S(j) +
                             "); cannot turn activation order into a permutation");
  return Status::Ok();
}

Status DecodeInt4(const Int4WeightSource& s, DecodedInt4* out) {
  static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the int4 rows are read as the packed words' bytes");
  LOWBIT_KRETURN_IF_ERROR(ValidateInt4Source(s));
  DecodedInt4& d = *out;
  d.n = s.n;
  d.k = s.k;
  d.group_size = Int4GroupSize(s.k, s.group_size);
  d.groups = Int4Groups(s.k, s.group_size);
  d.asym = s.zero_point_packed != nullptr;
  d.scale = ScalesToFloat(s.scale);
  d.zero.assign(s.n * d.groups, 0);
  if (d.asym)
    for (int64_t r = 0; r < s.n; ++r)
      for (int64_t g = 0; g < d.groups; ++g) {
        uint32_t w = static_cast<uint32_t>(s.zero_point_packed[(r / 8) * d.groups + g]);
        d.zero[r * d.groups + g] = static_cast<int8_t>(static_cast<int32_t>((w >> (4 * (r % 8))) & 15u) - 8);
      }
  LOWBIT_KRETURN_IF_ERROR(Int4ActOrderPermutation(s, &d.perm));
  // Code c of a row sits in bits 4 (c % 8) of word c / 8, so (little-endian) in byte c / 2, nibble
  // c % 2: a row's codes in checkpoint order are the bytes of its words.
  const int64_t k = s.k, kh = (k + 1) / 2, words = (k + 7) / 8;
  d.row_bytes = kh;
  d.nibbles.resize(s.n * kh);
  std::vector<uint8_t> raw(d.perm.empty() ? 0 : k);  // one row's codes + 8, checkpoint order
  for (int64_t r = 0; r < s.n; ++r) {
    const auto* src = reinterpret_cast<const uint8_t*>(s.weight_packed + r * words);
    uint8_t* dst = d.nibbles.data() + r * kh;
    if (d.perm.empty()) {
      std::memcpy(dst, src, kh);
      if (k % 2 != 0) dst[kh - 1] = static_cast<uint8_t>((dst[kh - 1] & 0x0F) | 0x80);
      continue;
    }
    for (int64_t c = 0; c < k; ++c) raw[c] = (src[c / 2] >> (4 * (c % 2))) & 15;
    for (int64_t b = 0; b < kh; ++b) {
      const uint8_t hi = 2 * b + 1 < k ? raw[d.perm[2 * b + 1]] : 8;
      dst[b] = static_cast<uint8_t>(raw[d.perm[2 * b]] | (hi << 4));
    }
  }
  return Status::Ok();
}

}  // namespace lowbit::kernels
