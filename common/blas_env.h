// Debian's OpenBLAS 0.3.21 does not recognise recent Xeons (family 6 model 207) and falls back
// to its slowest kernel (about 8x slower than with OPENBLAS_CORETYPE=SkylakeX). It reads
// OPENBLAS_CORETYPE once, when the library loads — before main() — so the only reliable fix
// from inside a program is to set the variable and re-exec. Every binary that calls BLAS calls
// EnsureBlasCoreType(argv) first thing in main().
#ifndef LOWBIT_COMMON_BLAS_ENV_H_
#define LOWBIT_COMMON_BLAS_ENV_H_

namespace lowbit {

// If OPENBLAS_CORETYPE is unset and the CPU has AVX-512 (F, BW, VL, DQ), sets it to "SkylakeX"
// and re-executes the current program with the same arguments. Returns normally (without
// re-exec) when the variable is already set, the CPU lacks AVX-512, or exec fails.
void EnsureBlasCoreType(char** argv);

// OpenBLAS (pthreads build) starts its worker threads when it loads, and an idle worker spins
// in sched_yield for about 2^28 cycles (≈ 0.1 s) after it starts and after each BLAS call
// before it sleeps: ≈ 0.1 s of CPU taken from whatever the process does next (measured: a
// 0.2 s busy main thread used 0.31 s of CPU with the idle worker, 0.20 s without). Stops those
// workers; OpenBLAS starts them again on its next multi-threaded call. A no-op when the program
// is not linked with OpenBLAS. For programs that mostly move data (the lowbit CLI).
void StopIdleBlasThreads();

}  // namespace lowbit

#endif  // LOWBIT_COMMON_BLAS_ENV_H_
