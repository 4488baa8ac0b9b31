// How a caller's call can end early, for the engine's long operations (a GEMM waiting in the
// batcher, a checkpoint being loaded): a deadline and a cancellation question. No gRPC here: the
// service fills it from grpc::ServerContext (IsCancelled, deadline()).
#ifndef LOWBIT_RUNTIME_CALL_CONTROL_H_
#define LOWBIT_RUNTIME_CALL_CONTROL_H_

#include <chrono>
#include <functional>

#include "absl/status/status.h"

namespace lowbit::runtime {

// A deadline (time_point::max() = none; checked every time, cheaply) and cancellation (e.g.
// grpc::ServerContext::IsCancelled; may be slow, see BatcherOptions::cancel_poll_us).
struct CallControl {
  std::function<bool()> cancelled;
  std::chrono::system_clock::time_point deadline = std::chrono::system_clock::time_point::max();
  // DEADLINE_EXCEEDED once the deadline passed, else OK.
  absl::Status CheckDeadline() const;
  // CheckDeadline, then CANCELLED if the call was cancelled.
  absl::Status Check() const;
};

}  // namespace lowbit::runtime

#endif  // LOWBIT_RUNTIME_CALL_CONTROL_H_
