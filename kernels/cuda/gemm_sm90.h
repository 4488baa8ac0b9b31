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

// Scaled 8-bit GEMMs: Y[m,n] = ((float)Σ_k X[m,k]·W[n,k] · w_scale[n]) · x_scale[m] + bias[n],
// W8A8 (int8, bit-identical to the CPU reference) and FP8 (e4m3, f32 accumulation). Needs
// K % 16 == 0 and N % 8 == 0 (16-byte TMA rows), 16-byte aligned pointers.
struct ScaledSm90Args {
  const void* x;  // int8 / e4m3 [M, K]
  const float* x_scale;
  int64_t x_scale_count;  // 1 or M
  const void* w;          // int8 / e4m3 [N, K]
  const float* w_scale;
  int64_t w_scale_count;  // 1 or N
  const float* bias;      // [N] or null
  int64_t m, n, k;
  void* y;  // [M, N]
  void* workspace;
  size_t workspace_bytes;
};
// M at and below which the 64×64-tile (1×8 cluster) configuration runs, then the 64×128 one.
constexpr int64_t kScaledTinyMaxM = 64;
constexpr int64_t kScaledSmallMaxM = 128;
// y_is_bf16: bf16 output, else f16. kUnimplemented (nothing enqueued) when CUTLASS refuses the
// problem, so the caller can take another path.
Status GemmW8A8(const ScaledSm90Args& a, bool y_is_bf16, cudaStream_t stream);
Status GemmFp8(const ScaledSm90Args& a, bool y_is_bf16, cudaStream_t stream);

// W4A16 for M > 16, symmetric int4 (no zero points): Y[M, N] = X[M, K] · W'ᵀ (+ bias), W'[n, k] =
// round_T(q[n, k] · s[g(k), n]), f32 accumulation, T = f16 or bf16 (activations and output).
struct W4A16Sm90Args {
  const void* w;       // int4 [N, K], q = code − 8 as signed nibbles, K-contiguous, low nibble first
  const void* scale;   // T [G, N] (N contiguous); G = ceil(K / group_size)
  int64_t group_size;  // K for per-channel scales
  const void* x;       // T [M, K]
  const float* bias;   // [N] or null
  int64_t m, n, k;
  void* y;  // T [M, N]
  void* workspace;
  size_t workspace_bytes;
};
// The shapes GemmW4A16 takes: K % 64 == 0, N % 8 == 0, a group size of K or a multiple of 64.
bool W4A16Supported(int64_t n, int64_t k, int64_t group_size);
// kUnimplemented (nothing enqueued) when CUTLASS refuses the problem.
Status GemmW4A16(const W4A16Sm90Args& a, bool bf16, cudaStream_t stream);

}  // namespace lowbit::kernels::cuda::sm90

#endif  // LOWBIT_KERNELS_CUDA_GEMM_SM90_H_
