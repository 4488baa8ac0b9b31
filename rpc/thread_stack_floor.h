// The process-wide floor under explicitly requested thread stack sizes (thread_stack_floor.cc):
// every executable linking lowbit_rpc defines and exports pthread_attr_setstacksize, which raises
// a smaller request to kMinThreadStackBytes, so that threads a library creates with a fixed small
// stack (civetweb's, behind /metrics) still fit the static TLS of the CUDA libraries.
#ifndef LOWBIT_RPC_THREAD_STACK_FLOOR_H_
#define LOWBIT_RPC_THREAD_STACK_FLOOR_H_

#include <cstddef>

namespace lowbit::rpc {

inline constexpr size_t kMinThreadStackBytes = size_t{1} << 20;

}  // namespace lowbit::rpc

#endif  // LOWBIT_RPC_THREAD_STACK_FLOOR_H_
