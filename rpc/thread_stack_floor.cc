// A floor under the stack size that libraries ask for their threads (see thread_stack_floor.h).
//
// glibc places each thread's static TLS at the top of the thread's stack, so a thread created
// with a fixed small stack fails (pthread_create: EINVAL) once the process has loaded libraries
// with a large static TLS. The runtime links cuBLASLt (≈ 94 KiB of static TLS), cuBLAS and the
// CUDA runtime (≈ 110 KiB together), and civetweb — the HTTP server behind prometheus-cpp's
// Exposer, i.e. /metrics — creates its threads with a fixed 100 KiB stack (its compile-time
// USE_STACK_SIZE; no run-time option): without this floor `lowbit-runtime --metrics_address`
// could not start. Defined in the executable and exported from it (see rpc/CMakeLists.txt), this
// pthread_attr_setstacksize is the one the shared libraries' calls bind to; it forwards to glibc's
// with the size raised to at least kMinThreadStackBytes. Stacks are mapped lazily, so the floor
// costs address space, not memory.
#include "rpc/thread_stack_floor.h"

#include <dlfcn.h>
#include <pthread.h>

#include <algorithm>
#include <cerrno>

namespace {

using SetStackSize = int (*)(pthread_attr_t*, size_t);

SetStackSize RealSetStackSize() {
  static const SetStackSize real = reinterpret_cast<SetStackSize>(dlsym(RTLD_NEXT, "pthread_attr_setstacksize"));
  return real;
}

}  // namespace

extern "C" int pthread_attr_setstacksize(pthread_attr_t* attr, size_t size) {
  const SetStackSize real = RealSetStackSize();
  if (real == nullptr) return ENOSYS;
  return real(attr, std::max(size, lowbit::rpc::kMinThreadStackBytes));
}
