// FP8-E4M3 GEMM through cuBLASLt: Y[M,N] (row-major) = X[M,K] · W[N,K]ᵀ, computed as the
// column-major D[N,M] = op(A)·B with A = W (TRANSA = T, the FP8 "TN" layout) and B = X.
// Scales: per tensor with A/B_SCALE_POINTER; per-token × per-channel with
// CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F (cuBLAS ≥ 12.9, sm_90): the A vector has one
// entry per row of op(A) (N, the weight channels), the B vector one per column of op(B)
// (M, the tokens). When cuBLASLt has no algorithm for a case, *used = false and the caller
// falls back to the simple kernel. Untested on a GPU so far (no device in the session that
// wrote it).
#include <cublasLt.h>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cublaslt_fp8.h"

namespace lowbit::kernels::cuda {

namespace {
Status LtStatus(cublasStatus_t s, const char* what) {
  if (s == CUBLAS_STATUS_SUCCESS) return Status::Ok();
  return Internal(std::string("cublasLt: ") + what + ": status " + std::to_string(static_cast<int>(s)));
}
#define LT(expr, what) LOWBIT_KRETURN_IF_ERROR(LtStatus((expr), what))

struct LtDescs {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  ~LtDescs() {
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (d) cublasLtMatrixLayoutDestroy(d);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (op) cublasLtMatmulDescDestroy(op);
  }
};
}  // namespace

Status CublasLtFp8Gemm(cublasLtHandle_t lt, const uint8_t* x, const float* x_scale, const uint8_t* w,
                       const float* w_scale, bool outer_vec, int64_t m, int64_t n, int64_t k, DType y_dtype, void* y,
                       void* workspace, size_t workspace_bytes, cudaStream_t stream, bool* used) {
  *used = false;
  LtDescs d;
  LT(cublasLtMatmulDescCreate(&d.op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "MatmulDescCreate");
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  LT(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta), "TRANSA");
  LT(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb), "TRANSB");
  LT(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &w_scale, sizeof w_scale), "A_SCALE");
  LT(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &x_scale, sizeof x_scale), "B_SCALE");
  if (outer_vec) {
    // A cuBLASLt without outer-vector scaling (< 12.9) refuses the attribute: fall back then.
    const int32_t mode = CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F;
    if (cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &mode, sizeof mode) !=
            CUBLAS_STATUS_SUCCESS ||
        cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &mode, sizeof mode) !=
            CUBLAS_STATUS_SUCCESS)
      return Status::Ok();
  }
  const cudaDataType_t dt = y_dtype == DType::kF32 ? CUDA_R_32F : y_dtype == DType::kF16 ? CUDA_R_16F : CUDA_R_16BF;
  LT(cublasLtMatrixLayoutCreate(&d.a, CUDA_R_8F_E4M3, k, n, k), "layout A");
  LT(cublasLtMatrixLayoutCreate(&d.b, CUDA_R_8F_E4M3, k, m, k), "layout B");
  LT(cublasLtMatrixLayoutCreate(&d.d, dt, n, m, n), "layout D");
  LT(cublasLtMatmulPreferenceCreate(&d.pref), "PreferenceCreate");
  LT(cublasLtMatmulPreferenceSetAttribute(d.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace_bytes,
                                          sizeof workspace_bytes),
     "MAX_WORKSPACE_BYTES");
  cublasLtMatmulHeuristicResult_t res{};
  int count = 0;
  cublasStatus_t hs = cublasLtMatmulAlgoGetHeuristic(lt, d.op, d.a, d.b, d.d, d.d, d.pref, 1, &res, &count);
  if (hs != CUBLAS_STATUS_SUCCESS || count == 0) return Status::Ok();  // not supported: fall back
  const float alpha = 1.0f, beta = 0.0f;
  LT(cublasLtMatmul(lt, d.op, &alpha, w, d.a, x, d.b, &beta, y, d.d, y, d.d, &res.algo, workspace, workspace_bytes,
                    stream),
     "Matmul");
  *used = true;
  return Status::Ok();
}

}  // namespace lowbit::kernels::cuda
