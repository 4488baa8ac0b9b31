#include "calibrator/hessian.h"

namespace lowbit {

HessianAccumulator::HessianAccumulator(int64_t k) : k_(k), sum_(static_cast<size_t>(k * k), 0.0f) {}

void HessianAccumulator::Add(Compute& compute, const float* x, int64_t rows, int64_t num_sequences) {
  compute.AddGram(rows, k_, 2.0f, x, sum_.data());
  n_ += num_sequences;
}

std::vector<float> HessianAccumulator::Finish() const {
  std::vector<float> h = sum_;
  if (n_ > 0) {
    const float n = static_cast<float>(n_);
    for (float& v : h) v /= n;
  }
  return h;
}

}  // namespace lowbit
