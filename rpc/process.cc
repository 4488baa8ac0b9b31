#include "rpc/process.h"

#include <malloc.h>

#include "absl/synchronization/mutex.h"

namespace lowbit::rpc {

void SetUpProcess() {
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
}

}  // namespace lowbit::rpc
