// The floor under any RPC latency on this machine: the round trip of one byte between two
// threads over a loopback TCP connection (TCP_NODELAY), with no RPC stack at all. On a VM whose
// idle vCPUs halt, each cross-CPU wake-up costs tens of microseconds, and every RPC pays at
// least two of them.
#ifndef LOWBIT_CLI_LOOPBACK_PROBE_H_
#define LOWBIT_CLI_LOOPBACK_PROBE_H_

#include <vector>

#include "absl/status/statusor.h"

namespace lowbit::cli {

// `calls` one-byte ping-pongs after 100 warm-up ones: each round trip in microseconds.
absl::StatusOr<std::vector<double>> MeasureLoopbackTcpRoundTrip(int calls);

}  // namespace lowbit::cli

#endif  // LOWBIT_CLI_LOOPBACK_PROBE_H_
