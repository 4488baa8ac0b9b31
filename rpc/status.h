// absl::Status inside, gRPC status at the edge: the same code and message both ways.
#ifndef LOWBIT_RPC_STATUS_H_
#define LOWBIT_RPC_STATUS_H_

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace lowbit::rpc {

grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace lowbit::rpc

#endif  // LOWBIT_RPC_STATUS_H_
