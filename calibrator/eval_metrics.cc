#include "calibrator/eval_metrics.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"

namespace lowbit {
namespace {

// log_softmax of one row in double.
void LogSoftmax(const float* x, int64_t n, std::vector<double>& out) {
  out.resize(n);
  double m = x[0];
  for (int64_t i = 1; i < n; ++i) m = std::max(m, static_cast<double>(x[i]));
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += std::exp(static_cast<double>(x[i]) - m);
  const double lse = m + std::log(sum);
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<double>(x[i]) - lse;
}

int64_t ArgMax(const float* x, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i) {
    if (x[i] > x[best]) best = i;
  }
  return best;
}

}  // namespace

double NearestRankPercentile(std::vector<double> values, double p) {
  if (values.empty()) return 0.0;
  const int64_t n = static_cast<int64_t>(values.size());
  int64_t rank = static_cast<int64_t>(std::ceil(p / 100.0 * static_cast<double>(n)));
  rank = std::clamp<int64_t>(rank, 1, n);
  std::nth_element(values.begin(), values.begin() + (rank - 1), values.end());
  return values[rank - 1];
}

absl::Status LogitComparison::Add(const float* ref_logits, const float* quant_logits, int64_t rows, int64_t vocab,
                                  const int32_t* next_tokens) {
  if (rows < 0 || vocab <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("LogitComparison: bad logits shape [", rows, ", ", vocab, "]"));
  }
  if (vocab_ != 0 && vocab != vocab_) {
    return absl::InvalidArgumentError(absl::StrCat("LogitComparison: vocab ", vocab, " differs from the earlier ", vocab_));
  }
  // Check everything first so a bad batch records nothing.
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t v = 0; v < vocab; ++v) {
      if (!std::isfinite(ref_logits[r * vocab + v])) {
        return absl::InvalidArgumentError(absl::StrCat("LogitComparison: reference logit at row ", r, ", index ", v,
                                                       " is ", ref_logits[r * vocab + v]));
      }
      if (!std::isfinite(quant_logits[r * vocab + v])) {
        return absl::InvalidArgumentError(absl::StrCat("LogitComparison: quantized model's logit at row ", r,
                                                       ", index ", v, " is ", quant_logits[r * vocab + v]));
      }
    }
    if (next_tokens != nullptr && (next_tokens[r] < -1 || next_tokens[r] >= vocab)) {
      return absl::InvalidArgumentError(absl::StrCat("LogitComparison: label ", next_tokens[r], " at row ", r,
                                                     " is outside [-1, ", vocab, ")"));
    }
  }
  vocab_ = vocab;
  std::vector<double> lp, lq;
  for (int64_t r = 0; r < rows; ++r) {
    const float* x = ref_logits + r * vocab;
    const float* y = quant_logits + r * vocab;
    LogSoftmax(x, vocab, lp);
    LogSoftmax(y, vocab, lq);
    double kl = 0.0;
    for (int64_t v = 0; v < vocab; ++v) kl += std::exp(lp[v]) * (lp[v] - lq[v]);
    kl_.push_back(std::max(kl, 0.0));
    if (ArgMax(x, vocab) == ArgMax(y, vocab)) ++agree_;
    if (next_tokens != nullptr && next_tokens[r] >= 0) {
      ++labeled_;
      ref_nll_sum_ -= lp[next_tokens[r]];
      quant_nll_sum_ -= lq[next_tokens[r]];
    }
  }
  return absl::OkStatus();
}

LogitComparisonSummary LogitComparison::Finish() const {
  LogitComparisonSummary s;
  s.tokens = static_cast<int64_t>(kl_.size());
  if (s.tokens > 0) {
    s.kl_mean = std::accumulate(kl_.begin(), kl_.end(), 0.0) / static_cast<double>(s.tokens);
    s.kl_p99 = NearestRankPercentile(kl_, 99.0);
    s.kl_max = *std::max_element(kl_.begin(), kl_.end());
    s.top1_agreement = static_cast<double>(agree_) / static_cast<double>(s.tokens);
  }
  s.labeled_tokens = labeled_;
  if (labeled_ > 0) {
    s.ref_nll = ref_nll_sum_ / static_cast<double>(labeled_);
    s.quant_nll = quant_nll_sum_ / static_cast<double>(labeled_);
    s.ref_perplexity = std::exp(*s.ref_nll);
    s.quant_perplexity = std::exp(*s.quant_nll);
    s.perplexity_ratio = *s.quant_perplexity / *s.ref_perplexity;
    s.perplexity_delta = *s.quant_perplexity - *s.ref_perplexity;
  }
  return s;
}

}  // namespace lowbit
