// Argument validation and host-side weight decoding shared by every backend.
#ifndef LOWBIT_KERNELS_VALIDATE_H_
#define LOWBIT_KERNELS_VALIDATE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/backend.h"

namespace lowbit::kernels {

Status ValidateQuantize(const char* op, DType x_dtype, const void* x, int64_t m, int64_t k, const void* q,
                        const void* scale_out, bool needs_scale_out);
Status ValidateInt8Source(const Int8WeightSource& s);
Status ValidateFp8Source(const Fp8WeightSource& s);
Status ValidateInt4Source(const Int4WeightSource& s);
// Checks a GEMM call against the prepared weight and the op's dtype rules.
// max_m: the backend's largest M (0 = no limit). The output must not overlap the activations,
// their scales or the bias (tiles write Y while others still read X).
Status ValidateGemm(const char* op, const GemmArgs& a, WeightKind kind, const std::string& backend, int64_t max_m = 0);
// A static per-tensor activation scale: finite, > 0, and with a finite inverse (the quantizer
// multiplies by 1 / scale, as vLLM's does; a scale below ≈ 2.9e-39 would make 0 · inf = NaN).
Status ValidateStaticScale(const char* op, float scale);
// A Prepare*'s output pointer.
Status ValidatePrepareOut(const std::string& backend, const void* out);
// The kernel-order permutation of an activation-order g_idx (empty when g_idx is null or already
// in group order); InvalidArgument unless every group gets exactly group_size columns.
Status Int4ActOrderPermutation(const Int4WeightSource& s, std::vector<int32_t>* perm);

// A ScaleView as f32 (exact: bf16/f16 -> f32 is exact).
std::vector<float> ScalesToFloat(const ScaleView& s);

// The int4 weight decoded into one canonical host form every backend repacks from.
struct DecodedInt4 {
  int64_t n = 0, k = 0, group_size = 0, groups = 0;
  // The codes, [N, row_bytes] with row_bytes = ceil(K / 2), columns in kernel order (permuted):
  // byte b of a row holds column 2b in its low nibble and column 2b + 1 in its high nibble, each as
  // q + 8 (the checkpoint's storage form); an odd K's last high nibble is 8 (q = 0). Without a
  // permutation a row is the first row_bytes bytes of its packed words, copied as they are.
  std::vector<uint8_t> nibbles;
  int64_t row_bytes = 0;
  std::vector<float> scale;  // [N, G]
  std::vector<int8_t> zero;  // [N, G] (all 0 when symmetric)
  bool asym = false;
  // Activation order: kernel column j is checkpoint column perm[j]; empty = identity. With
  // the permutation applied, column j belongs to group j / group_size.
  std::vector<int32_t> perm;
  // q[r, c] in [-8, 7], c in kernel order.
  int Code(int64_t r, int64_t c) const { return ((nibbles[r * row_bytes + c / 2] >> (4 * (c % 2))) & 15) - 8; }
};
Status DecodeInt4(const Int4WeightSource& s, DecodedInt4* out);

// Number of groups of a [N, K] int4 weight with group_size (0 or ≥ K: per channel).
int64_t Int4Groups(int64_t k, int64_t group_size);
int64_t Int4GroupSize(int64_t k, int64_t group_size);

}  // namespace lowbit::kernels

#endif  // LOWBIT_KERNELS_VALIDATE_H_
