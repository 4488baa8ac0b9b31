// Hopper (sm_90a) GEMMs built on CUTLASS 3.x, compiled only when the CUTLASS headers are present
// (LOWBIT_KERNELS_HAVE_CUTLASS; scripts/setup.sh installs them into .pytools). Host-callable from
// the CUDA backend; every launcher enqueues on `stream` and allocates nothing.
#ifndef LOWBIT_KERNELS_CUDA_GEMM_SM90_H_
#define LOWBIT_KERNELS_CUDA_GEMM_SM90_H_

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels/status.h"

namespace lowbit::kernels::cuda::sm90 {

// Y[m,n] = ((float)Σ_k X[m,k]·W[n,k] · w_scale[n]) · x_scale[m] + bias[n], bit-identical to the
// CPU reference. Needs K % 16 == 0 and N % 8 == 0 (16-byte TMA rows), 16-byte aligned pointers.
struct W8A8Sm90Args {
  const void* x;  // int8 [M, K]
  const float* x_scale;
  int64_t x_scale_count;  // 1 or M
  const void* w;          // int8 [N, K]
  const float* w_scale;
  int64_t w_scale_count;  // 1 or N
  const float* bias;      // [N] or null
  int64_t m, n, k;
  void* y;  // [M, N]
  void* workspace;
  size_t workspace_bytes;
};
// M at and below which the 64-row tile configuration runs.
constexpr int64_t kW8A8SmallMaxM = 128;
// y_is_bf16: bf16 output, else f16.
Status GemmW8A8(const W8A8Sm90Args& a, bool y_is_bf16, cudaStream_t stream);

}  // namespace lowbit::kernels::cuda::sm90

#endif  // LOWBIT_KERNELS_CUDA_GEMM_SM90_H_
