#ifndef LOWBIT_KERNELS_CPU_CPU_BACKEND_H_
#define LOWBIT_KERNELS_CPU_CPU_BACKEND_H_

#include <memory>
#include <string>
#include <string_view>

#include "kernels/backend.h"

namespace lowbit::kernels {

// "cpu" (AVX-512 VNNI/BF16 fast paths when the CPU has them, else AVX2 + FMA + F16C when it has
// those, else portable), "cpu-avx2" (the AVX2 paths even on an AVX-512 CPU; MakeBackend refuses
// it on a CPU without AVX2/FMA/F16C), "cpu-generic" (portable micro-kernels always), "cpu-ref"
// (the reference loops).
std::unique_ptr<Backend> MakeCpuBackend(std::string_view name, const BackendOptions& options);
// The micro-kernel family "cpu" uses on this machine: "avx512-vnni-bf16", "avx2-fma-f16c" or
// "generic".
std::string CpuIsa();
// Whether this CPU can run the AVX2 + FMA + F16C micro-kernels ("cpu-avx2").
bool CpuHasAvx2Kernels();

}  // namespace lowbit::kernels

#endif  // LOWBIT_KERNELS_CPU_CPU_BACKEND_H_
