// GPTQ's Hessian of one Linear layer's input: H = (2/n) Σ_tokens x xᵀ, with n the number of
// calibration *sequences* (not tokens), as llm-compressor HEAD computes it
// (shared/reference/llm-compressor-algorithms.md §1.2): the sum 2·XᵀX is accumulated over
// batches and divided by n once, at the end. The scale of H does not change GPTQ's result; it
// only sets the logged loss.
#ifndef LOWBIT_CALIBRATOR_HESSIAN_H_
#define LOWBIT_CALIBRATOR_HESSIAN_H_

#include <cstdint>
#include <vector>

#include "calibrator/compute.h"

namespace lowbit {

class HessianAccumulator {
 public:
  // k: the layer's in_features.
  explicit HessianAccumulator(int64_t k);

  // Adds a batch: `x` is [rows, k] row-major float32, the tokens of `num_sequences` sequences
  // (a batch of b sequences of t tokens is rows = b·t, num_sequences = b).
  void Add(Compute& compute, const float* x, int64_t rows, int64_t num_sequences);

  int64_t k() const { return k_; }
  int64_t num_sequences() const { return n_; }
  // Σ 2·x xᵀ so far, [k, k] (both triangles).
  const std::vector<float>& sum() const { return sum_; }

  // H = sum / n, [k, k] row-major (both triangles). All zeros when nothing was added.
  std::vector<float> Finish() const;

 private:
  int64_t k_;
  int64_t n_ = 0;
  std::vector<float> sum_;
};

}  // namespace lowbit

#endif  // LOWBIT_CALIBRATOR_HESSIAN_H_
