// The engine's CallControl (runtime/call_control.h) for a call of the sync gRPC API: the call's
// deadline, and ServerContext::IsCancelled as the cancellation question (a completion-queue
// pluck, ≈ 30 µs: the batcher asks it rarely, BatcherOptions::cancel_poll_us).
#ifndef LOWBIT_RUNTIME_SERVICE_GRPC_CALL_CONTROL_H_
#define LOWBIT_RUNTIME_SERVICE_GRPC_CALL_CONTROL_H_

#include "grpcpp/server_context.h"
#include "runtime/call_control.h"

namespace lowbit::runtime {

inline CallControl ControlOf(grpc::ServerContext* ctx) {
  CallControl c;
  c.cancelled = [ctx] { return ctx->IsCancelled(); };
  c.deadline = ctx->deadline();
  return c;
}

}  // namespace lowbit::runtime

#endif  // LOWBIT_RUNTIME_SERVICE_GRPC_CALL_CONTROL_H_
