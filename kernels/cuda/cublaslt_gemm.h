#ifndef LOWBIT_KERNELS_CUDA_CUBLASLT_GEMM_H_
#define LOWBIT_KERNELS_CUDA_CUBLASLT_GEMM_H_

#include <cublasLt.h>
#include <cuda_runtime.h>

#include "common/dtype.h"
#include "kernels/status.h"

namespace lowbit::kernels::cuda {

// Both: Y = X · Wᵀ through cuBLASLt's TN form (gemm_cublaslt.cu); *used = false when cuBLASLt has
// no algorithm for the case, and the caller runs its own kernel.

// x_scale / w_scale: device f32, one element each (outer_vec = false) or M / N elements.
Status CublasLtFp8Gemm(cublasLtHandle_t lt, const uint8_t* x, const float* x_scale, const uint8_t* w,
                       const float* w_scale, bool outer_vec, int64_t m, int64_t n, int64_t k, DType y_dtype, void* y,
                       void* workspace, size_t workspace_bytes, cudaStream_t stream, bool* used);

// acc[M,N] (row-major int32) = X[M,K] · W[N,K]ᵀ, exact (int32 accumulation on the tensor cores).
Status CublasLtInt8Gemm(cublasLtHandle_t lt, const int8_t* x, const int8_t* w, int64_t m, int64_t n, int64_t k,
                        int32_t* acc, void* workspace, size_t workspace_bytes, cudaStream_t stream, bool* used);

}  // namespace lowbit::kernels::cuda

#endif  // LOWBIT_KERNELS_CUDA_CUBLASLT_GEMM_H_
