// Dynamic batching: concurrent GEMM requests for the same layer (same activation and output
// dtypes) that arrive within max_queue_delay_us of the first one are concatenated along M into
// one GEMM, and the result rows are split back. No dispatcher thread: the first request of a
// queue leads — it waits out the delay (or until max_batch_rows are queued), then takes the
// exclusive execution slot, takes as many queued requests as fit in max_batch_rows (always at
// least one, so a large request runs alone), hands the leadership to the next queued request,
// runs the batch and hands every request its rows. Requests queued while a GEMM runs join the
// next batch, so batches grow with load even with a zero delay.
// A waiting request leaves the queue at its deadline, or within cancel_poll_us of its call being
// cancelled; one whose deadline passed by the time its batch is taken is shed, not computed
// (with batching off: by the time it gets the execution slot). A request taken into a running
// GEMM waits for it (or its deadline).
#ifndef LOWBIT_RUNTIME_BATCHER_H_
#define LOWBIT_RUNTIME_BATCHER_H_

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <vector>

#include "absl/status/statusor.h"
#include "common/tensor.h"
#include "runtime/call_control.h"
#include "runtime/layer_stats.h"
#include "runtime/metrics.h"
#include "runtime/model_registry.h"

namespace lowbit::runtime {

struct BatcherOptions {
  bool enabled = true;
  int64_t max_queue_delay_us = 0;  // 0: batches form from requests queued while a GEMM runs
  int64_t max_batch_rows = 4096;
  // How often a queued request asks whether its call was cancelled. The question is not free:
  // gRPC's sync ServerContext::IsCancelled polls the call's completion queue (an epoll_wait;
  // measured ≈ 30 µs on a 2-vCPU VM), so a request is first asked after waiting this long.
  int64_t cancel_poll_us = 20'000;
};

struct GemmResult {
  Tensor y;                // [M, N]
  int batch_requests = 1;  // requests in that GEMM
  int64_t batch_rows = 0;  // rows in that GEMM
  ExecutionTiming timing;  // that GEMM's phases
  uint64_t queue_ns = 0;   // this request's wait for its batch (or, batching off, the execution slot)
  // Time of the GEMM that computed it (the whole batch): its infer phase, in µs.
  double kernel_us() const { return timing.infer_ns * 1e-3; }
};

// One validated request, ready to run.
struct BatchItem {
  std::shared_ptr<const PreparedLinear> layer;
  Tensor x;  // [M, K] F32/F16/BF16
  DType out_dtype = DType::kF32;
};

class Batcher {
 public:
  // Runs one GEMM over the concatenation of `xs` (same layer and dtypes) and returns one output
  // per input, in order, plus the GEMM's phases.
  using Executor = std::function<absl::Status(const PreparedLinear& layer, DType x_dtype, DType out_dtype,
                                              const std::vector<const Tensor*>& xs, std::vector<Tensor>* ys,
                                              ExecutionTiming* timing)>;

  Batcher(BatcherOptions options, Executor executor, RuntimeMetrics* metrics)
      : options_(options), executor_(std::move(executor)), metrics_(metrics) {}

  absl::StatusOr<GemmResult> Run(BatchItem item, const CallControl& control);
  const BatcherOptions& options() const { return options_; }

 private:
  struct Pending;
  using Key = std::tuple<const PreparedLinear*, DType, DType>;
  struct Queue {
    std::deque<std::shared_ptr<Pending>> items;
    int64_t rows = 0;
  };
  absl::StatusOr<GemmResult> RunAlone(BatchItem item, const CallControl& control);
  void Execute(const std::vector<std::shared_ptr<Pending>>& batch);
  // Removes a queued request (cancelled); hands the leadership on if it led. Under mu_.
  void Withdraw(const Key& key, const std::shared_ptr<Pending>& p);

  BatcherOptions options_;
  Executor executor_;
  RuntimeMetrics* metrics_;
  std::mutex mu_;
  std::map<Key, Queue> queues_;
  std::mutex exec_mu_;  // one GEMM at a time (the backend runs one stream / one pool)
};

}  // namespace lowbit::runtime

#endif  // LOWBIT_RUNTIME_BATCHER_H_
