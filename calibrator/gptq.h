// GPTQ (Frantar et al., arXiv 2210.17323) as llm-compressor HEAD runs it
// (shared/reference/llm-compressor-algorithms.md §1):
//   * scales / zero points are observed once, up front, from the original weight
//     (actorder "group": from the column-permuted original weight);
//   * actorder "weight"/"static": columns processed in descending diag(H) order, each column
//     keeps its original group, no g_idx is saved; "group"/"dynamic": groups are formed over
//     the permuted order and g_idx = (arange(K) // group_size)[invperm] is saved. actorder
//     "group" on a non-group strategy falls back to no actorder with a warning;
//   * dead inputs (diag(H) == 0): H[i,i] = 1 and W[:, i] = 0;
//   * dampening: dampening_frac · mean(diag H) added to the diagonal;
//   * U = upper Cholesky factor of H⁻¹; if H cannot be factored, U = I (round-to-nearest) and
//     the result carries a warning;
//   * blocks of block_size columns; inside a block every column's error is propagated to the
//     block's later columns, and at the block's end to all later columns in one GEMM;
//   * loss = Σ (w − q)² / (2 d²), d the diagonal of U in processing order.
// The Cholesky factor and the block (lazy) updates run through `Compute`; the per-column
// quantization and the in-block rank-1 updates run on the host in row tiles.
#ifndef LOWBIT_CALIBRATOR_GPTQ_H_
#define LOWBIT_CALIBRATOR_GPTQ_H_

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "calibrator/compute.h"
#include "common/checkpoint.h"
#include "common/dtype.h"
#include "common/quant_args.h"

namespace lowbit {

struct GptqOptions {
  int64_t block_size = 128;
  double dampening_frac = 0.01;
};

struct GptqResult {
  // Codes and qparams laid out exactly as QuantizeLinearRtn's (EncodeLinear accepts it);
  // g_idx only for actorder "group".
  QuantizedLinear quantized;
  // [N, K] float: the fake-quantized weight the layer runs with afterwards (equals
  // DequantizeLinear(quantized)).
  std::vector<float> dequantized;
  double loss = 0;     // Σ (w − q)² / (2 d²)
  double seconds = 0;  // wall time of QuantizeLinearGptq
  // Where the time went: qparams, permutation and transposes in; the inverse factor
  // (dampening + Compute::CholeskyInverseUpper); the in-block column loop (host); the lazy
  // block updates (Compute::Gemm); the transposes out.
  struct Phases {
    double prepare = 0, factor = 0, columns = 0, lazy_updates = 0, finish = 0;
  } phases;
  bool fell_back_to_rtn = false;
  std::string warning;  // non-empty when something was logged (RTN fallback, actorder ignored)
};

// GPTQ of one Linear: `weight` is [rows = N out_features, cols = K in_features] row-major
// float32, `hessian` the [K, K] Hessian of its input (HessianAccumulator::Finish), taken by
// value and used as scratch. Supports what QuantizeLinearRtn supports: int weights (2–8 bits,
// symmetric or asymmetric, tensor / channel / group strategy, min-max or MSE observer) and
// FP8 E4M3 weights (tensor / channel / group). actorder is weight_args.actorder. Scales are
// rounded to `scale_dtype`.
// InvalidArgument: sizes do not match, H is not [K, K], group_size does not divide K,
// non-finite weights, bad options. Unimplemented: strategies other than tensor/channel/group,
// FP8 with actorder "group".
absl::StatusOr<GptqResult> QuantizeLinearGptq(const std::string& module, std::span<const float> weight,
                                              int64_t rows, int64_t cols, std::vector<float> hessian,
                                              const QuantArgs& weight_args, DType scale_dtype,
                                              const GptqOptions& options, Compute& compute);

// ‖X·Aᵀ − X·Bᵀ‖_F for X [tokens, cols] and weights A, B [rows, cols]: the layer-output error of
// replacing A by B on inputs X.
double OutputError(Compute& compute, std::span<const float> x, int64_t tokens, std::span<const float> a,
                   std::span<const float> b, int64_t rows, int64_t cols);

// The GPTQ objective tr((A − B)·H·(A − B)ᵀ) for a [K, K] H and [rows, cols = K] weights.
double HessianWeightedError(Compute& compute, std::span<const float> hessian, std::span<const float> a,
                            std::span<const float> b, int64_t rows, int64_t cols);

}  // namespace lowbit

#endif  // LOWBIT_CALIBRATOR_GPTQ_H_
