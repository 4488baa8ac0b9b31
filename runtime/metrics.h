// The runtime's Prometheus metrics (added to the server's registry, served on /metrics):
// queue depth, batch sizes (requests and rows per GEMM), GEMM kernel time, models loaded and
// weight memory used / budget. Null-safe: an engine without a registry records nothing.
#ifndef LOWBIT_RUNTIME_METRICS_H_
#define LOWBIT_RUNTIME_METRICS_H_

#include <cstdint>
#include <memory>

#include "prometheus/counter.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace lowbit::runtime {

class RuntimeMetrics {
 public:
  explicit RuntimeMetrics(prometheus::Registry& registry);
  void QueueDepth(int64_t delta) { queue_depth_->Increment(static_cast<double>(delta)); }
  void Batch(int requests, int64_t rows, double kernel_seconds);
  void Models(size_t count, int64_t used_bytes, int64_t budget_bytes);

 private:
  prometheus::Gauge* queue_depth_;
  prometheus::Histogram* batch_requests_;
  prometheus::Histogram* batch_rows_;
  prometheus::Histogram* kernel_seconds_;
  prometheus::Counter* gemms_;
  prometheus::Gauge* models_;
  prometheus::Gauge* memory_used_;
  prometheus::Gauge* memory_budget_;
};

}  // namespace lowbit::runtime

#endif  // LOWBIT_RUNTIME_METRICS_H_
