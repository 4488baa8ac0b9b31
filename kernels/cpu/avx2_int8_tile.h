// The hot W8A8 register tile of the AVX2 CPU kernels (cpu_backend.cc, "AVX2"): 4 rows × the 32
// columns of a weight panel, in 8-column sub-panels (every M ≥ 4 runs on it). Same arguments as
// the other micro-kernels there: x = 4 packed activation rows (xs uint32 apart; per k-group four
// int16 (x + 128)), w = one k-block of a panel, `groups` k-groups, c = 4 rows of int32 sums (cs
// apart), added to when `accumulate`.
//
// The AVX2 W8A8 layout of a k-block (Avx2I8Offset in cpu_backend.cc): its four 8-column
// sub-panels one after another, each `groups` × 32 bytes (8 columns × 4 int8 per k-group). The
// tiles take a k-block one sub-panel at a time (the 4-row tile's 8 accumulators fill the
// registers), so each pass streams one contiguous run of bytes. Before 2026-12-02 the layout was
// AVX-512's (a k-group's 32 columns in 128 contiguous bytes), and each pass read 32 of every 128
// bytes: a strided stream the hardware prefetcher followed late, which left W8A8 at M = 2..8
// 1.4–2.6× slower (docs/benchmarks.md). The tiles also prefetch kWeightPrefetchGroups k-groups
// ahead in their stream.
//
// It lives in a file of its own because of how it must be compiled: GCC's tree-PRE pass (on at
// -O3) turns the accumulators of this loop into register copies and a stack spill per k-group
// (35 instructions per group instead of 24); this file is built with -fno-tree-pre
// (kernels/CMakeLists.txt). The integer math is exact, so the result is the same either way.
#ifndef LOWBIT_KERNELS_CPU_AVX2_INT8_TILE_H_
#define LOWBIT_KERNELS_CPU_AVX2_INT8_TILE_H_

#include <cstdint>

namespace lowbit::kernels::cpu {

inline constexpr int64_t kWeightPrefetchGroups = 32;

void MicroI8Avx2Rows4(const uint32_t* x, int64_t xs, const uint8_t* w, int64_t groups, uint32_t* c, int64_t cs,
                      bool accumulate);

}  // namespace lowbit::kernels::cpu

#endif  // LOWBIT_KERNELS_CPU_AVX2_INT8_TILE_H_
