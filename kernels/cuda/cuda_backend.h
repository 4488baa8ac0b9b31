#ifndef LOWBIT_KERNELS_CUDA_CUDA_BACKEND_H_
#define LOWBIT_KERNELS_CUDA_CUDA_BACKEND_H_

#include <memory>

#include "kernels/backend.h"

namespace lowbit::kernels {

// Number of visible CUDA devices (0 when the driver or a device is missing).
int CudaDeviceCount();
// simple = true ("cuda-simple"): only the plain CUDA kernels, no cuBLAS / cuBLASLt paths.
Status MakeCudaBackend(const BackendOptions& options, bool simple, std::unique_ptr<Backend>* out);

}  // namespace lowbit::kernels

#endif  // LOWBIT_KERNELS_CUDA_CUDA_BACKEND_H_
