// Quantized-vs-original comparison on held-out samples, from the logits of both models
// (shared/design.md §1, report.json: KL divergence, top-1 agreement, perplexity).
//
// Per token (row) t with reference logits r and quantized logits q over the vocabulary:
//   log P = log_softmax(r), log Q = log_softmax(q), computed in double with the row maximum
//   subtracted first (numerically stable);
//   KL_t = sum_v P(v) (log P(v) - log Q(v))  — KL(P_ref || P_quant), clamped at 0 against
//   rounding, so adding a constant to a row changes nothing;
//   top-1 agreement: argmax r == argmax q (ties go to the lowest index, as torch.argmax);
//   with a label y_t >= 0 (the next token): NLL_ref = -log P(y_t), NLL_quant = -log Q(y_t).
// Summary: mean and p99 of KL_t over all rows, where p99 is the nearest-rank percentile —
// the ceil(0.99 * N)-th smallest value (1-based) — and perplexity = exp(mean NLL) over the
// labelled rows, for each model.
#ifndef LOWBIT_CALIBRATOR_EVAL_METRICS_H_
#define LOWBIT_CALIBRATOR_EVAL_METRICS_H_

#include <cstdint>
#include <optional>
#include <vector>

#include "absl/status/status.h"

namespace lowbit {

struct LogitComparisonSummary {
  int64_t tokens = 0;          // rows compared
  double kl_mean = 0.0;        // nats
  double kl_p99 = 0.0;         // nearest rank
  double kl_max = 0.0;
  double top1_agreement = 0.0;  // fraction of rows, in [0, 1]
  int64_t labeled_tokens = 0;   // rows with a next-token label
  // Present when labeled_tokens > 0.
  std::optional<double> ref_nll, quant_nll;                // mean NLL, nats
  std::optional<double> ref_perplexity, quant_perplexity;  // exp(mean NLL)
  std::optional<double> perplexity_ratio;                  // quant / ref
  std::optional<double> perplexity_delta;                  // quant - ref
};

// Nearest-rank percentile of `values` (p in (0, 100]): the ceil(p/100 * N)-th smallest; 0 for
// an empty vector.
double NearestRankPercentile(std::vector<double> values, double p);

class LogitComparison {
 public:
  // ref_logits, quant_logits: [rows, vocab] row-major. next_tokens: null, or [rows] labels
  // with -1 for "no label" (e.g. a sequence's last position). InvalidArgument — and nothing
  // recorded — for a non-finite logit (naming which model, row and index), a label outside
  // [-1, vocab), or a vocab that changed since the first call.
  absl::Status Add(const float* ref_logits, const float* quant_logits, int64_t rows, int64_t vocab,
                   const int32_t* next_tokens);
  LogitComparisonSummary Finish() const;

 private:
  int64_t vocab_ = 0;
  std::vector<double> kl_;  // one per row
  int64_t agree_ = 0;
  int64_t labeled_ = 0;
  double ref_nll_sum_ = 0.0, quant_nll_sum_ = 0.0;
};

}  // namespace lowbit

#endif  // LOWBIT_CALIBRATOR_EVAL_METRICS_H_
