#include "common/blas_env.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>

// OpenBLAS's own shutdown of its thread pool (exported; its fork handler uses it). Weak: null
// when the program is not linked with OpenBLAS.
extern "C" int blas_thread_shutdown_(void) __attribute__((weak));

namespace lowbit {

void EnsureBlasCoreType(char** argv) {
  if (std::getenv("OPENBLAS_CORETYPE") != nullptr) return;
#if defined(__x86_64__)
  __builtin_cpu_init();
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  if (!avx512) return;
  if (setenv("OPENBLAS_CORETYPE", "SkylakeX", /*overwrite=*/0) != 0) return;
  execv("/proc/self/exe", argv);
  // exec failed: carry on with whatever kernel OpenBLAS picked.
  std::fprintf(stderr, "lowbit: could not re-exec with OPENBLAS_CORETYPE=SkylakeX; BLAS may be slow\n");
#else
  (void)argv;
#endif
}

void StopIdleBlasThreads() {
  if (blas_thread_shutdown_ != nullptr) blas_thread_shutdown_();
}

}  // namespace lowbit
