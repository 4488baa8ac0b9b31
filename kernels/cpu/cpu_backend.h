#ifndef LOWBIT_KERNELS_CPU_CPU_BACKEND_H_
#define LOWBIT_KERNELS_CPU_CPU_BACKEND_H_

#include <memory>
#include <string>
#include <string_view>

#include "kernels/backend.h"

namespace lowbit::kernels {

// "cpu" (AVX-512 VNNI/BF16 fast paths when the CPU has them, else portable), "cpu-generic"
// (portable micro-kernels always), "cpu-ref" (the reference loops).
std::unique_ptr<Backend> MakeCpuBackend(std::string_view name, const BackendOptions& options);
// The micro-kernel family "cpu" uses on this machine.
std::string CpuIsa();

}  // namespace lowbit::kernels

#endif  // LOWBIT_KERNELS_CPU_CPU_BACKEND_H_
