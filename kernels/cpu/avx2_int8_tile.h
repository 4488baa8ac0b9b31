// The hot W8A8 register tile of the AVX2 CPU kernels (cpu_backend.cc, "AVX2"): 4 rows × the 32
// columns of a weight panel, in 8-column sub-panels (every M ≥ 4 runs on it). Same arguments and
// layout as the other micro-kernels there: x = 4 packed activation rows (xs uint32 apart; per
// k-group four int16 (x + 128)), w = a panel's `groups` k-groups of 128 bytes (32 columns × 4
// int8), c = 4 rows of int32 sums (cs apart), added to when `accumulate`.
//
// It lives in a file of its own because of how it must be compiled: GCC's tree-PRE pass (on at
// -O3) turns the accumulators of this loop into register copies and a stack spill per k-group
// (35 instructions per group instead of 24); this file is built with -fno-tree-pre
// (kernels/CMakeLists.txt). The integer math is exact, so the result is the same either way.
//
// The tiles narrower than a panel (this one, and the 2- and 3-row ones in cpu_backend.cc) read
// each k-group's 128 bytes in slices, 32 or 64 bytes a pass, so their weight stream has a stride
// of 128 bytes that the hardware prefetcher follows late: at M = 2..32 the first pass over a
// panel's k-block stalled on its loads (31% of the tile's samples at M = 32). They prefetch
// kWeightPrefetchGroups groups (4 KB) ahead, which makes W8A8 at M = 2..8 1.35–1.85× and at
// M = 32 ≈ 1.15× faster on Zen 3 (docs/benchmarks.md); the full-width one-row tile streams
// sequentially and needs none.
#ifndef LOWBIT_KERNELS_CPU_AVX2_INT8_TILE_H_
#define LOWBIT_KERNELS_CPU_AVX2_INT8_TILE_H_

#include <cstdint>

namespace lowbit::kernels::cpu {

inline constexpr int64_t kWeightPrefetchGroups = 32;

void MicroI8Avx2Rows4(const uint32_t* x, int64_t xs, const uint8_t* w, int64_t groups, uint32_t* c, int64_t cs,
                      bool accumulate);

}  // namespace lowbit::kernels::cpu

#endif  // LOWBIT_KERNELS_CPU_AVX2_INT8_TILE_H_
