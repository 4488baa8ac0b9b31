#include "runtime/layer_stats.h"

#include <chrono>

namespace lowbit::runtime {

void LayerStats::Touch() {
  s_.last_inference_ms = static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
          .count());
}

void LayerStats::Succeeded(int64_t rows, uint64_t total_ns, uint64_t queue_ns, const ExecutionTiming& gemm) {
  std::lock_guard<std::mutex> lock(mu_);
  s_.inference_count += static_cast<uint64_t>(rows);
  s_.success.Add(total_ns);
  s_.queue.Add(queue_ns);
  s_.compute_input.Add(gemm.input_ns);
  s_.compute_infer.Add(gemm.infer_ns);
  s_.compute_output.Add(gemm.output_ns);
  Touch();
}

void LayerStats::Failed(uint64_t total_ns) {
  std::lock_guard<std::mutex> lock(mu_);
  s_.fail.Add(total_ns);
  Touch();
}

void LayerStats::Executed(int64_t rows, const ExecutionTiming& timing) {
  std::lock_guard<std::mutex> lock(mu_);
  ++s_.execution_count;
  LayerStatsSnapshot::Batch& b = s_.batches[static_cast<uint64_t>(rows)];
  b.input.Add(timing.input_ns);
  b.infer.Add(timing.infer_ns);
  b.output.Add(timing.output_ns);
}

LayerStatsSnapshot LayerStats::Snapshot() const {
  std::lock_guard<std::mutex> lock(mu_);
  return s_;
}

}  // namespace lowbit::runtime
