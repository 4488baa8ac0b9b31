// GEMMs through cuBLASLt, both in the "TN" form its FP8 and int8 tensor-core kernels need:
// Y[M,N] (row-major) = X[M,K] · W[N,K]ᵀ is the column-major D[N,M] = op(A)·B with A = W
// (TRANSA = T) and B = X.
//
// FP8-E4M3: scales per tensor with A/B_SCALE_POINTER; per-token × per-channel with
// CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F (cuBLAS ≥ 12.9, sm_90): the A vector has one entry
// per row of op(A) (N, the weight channels), the B vector one per column of op(B) (M, the
// tokens).
// INT8: int32 accumulators only (CUBLAS_COMPUTE_32I); the caller's epilogue applies the scales,
// so the result is bit-identical to the SIMT kernel's.
// When cuBLASLt has no algorithm for a case (or refuses it as not supported), *used = false and
// the caller falls back to its own kernel. Untested on a GPU so far (no device in the sessions
// that wrote it).
#include <cublasLt.h>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cublaslt_gemm.h"

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

namespace {

// Layouts for D[N,M] = Wᵀ·X in the TN form (A = W, K×N column-major = W row-major; B = X,
// K×M column-major = X row-major; D N×M column-major = Y row-major), the preference with the
// workspace limit, and the heuristic's first algorithm. false in *found: none for this case.
Status PlanTn(cublasLtHandle_t lt, LtDescs& d, cudaDataType_t ab, cudaDataType_t dt, int64_t m, int64_t n, int64_t k,
              size_t workspace_bytes, cublasLtMatmulHeuristicResult_t* res, bool* found) {
  *found = false;
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  LT(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta), "TRANSA");
  LT(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb), "TRANSB");
  LT(cublasLtMatrixLayoutCreate(&d.a, ab, k, n, k), "layout A");
  LT(cublasLtMatrixLayoutCreate(&d.b, ab, k, m, k), "layout B");
  LT(cublasLtMatrixLayoutCreate(&d.d, dt, n, m, n), "layout D");
  LT(cublasLtMatmulPreferenceCreate(&d.pref), "PreferenceCreate");
  LT(cublasLtMatmulPreferenceSetAttribute(d.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace_bytes,
                                          sizeof workspace_bytes),
     "MAX_WORKSPACE_BYTES");
  int count = 0;
  const cublasStatus_t hs = cublasLtMatmulAlgoGetHeuristic(lt, d.op, d.a, d.b, d.d, d.d, d.pref, 1, res, &count);
  *found = hs == CUBLAS_STATUS_SUCCESS && count > 0;
  return Status::Ok();
}

// The matmul itself; NOT_SUPPORTED leaves *used false (the caller falls back), other failures
// are errors.
Status RunTn(cublasLtHandle_t lt, LtDescs& d, const cublasLtMatmulHeuristicResult_t& res, const void* alpha,
             const void* w, const void* x, const void* beta, void* y, void* workspace, size_t workspace_bytes,
             cudaStream_t stream, bool* used) {
  const cublasStatus_t s = cublasLtMatmul(lt, d.op, alpha, w, d.a, x, d.b, beta, y, d.d, y, d.d, &res.algo, workspace,
                                          workspace_bytes, stream);
  if (s == CUBLAS_STATUS_NOT_SUPPORTED) return Status::Ok();
  LT(s, "Matmul");
  *used = true;
  return Status::Ok();
}

}  // namespace

Status CublasLtFp8Gemm(cublasLtHandle_t lt, const uint8_t* x, const float* x_scale, const uint8_t* w,
                       const float* w_scale, bool outer_vec, int64_t m, int64_t n, int64_t k, DType y_dtype, void* y,
                       void* workspace, size_t workspace_bytes, cudaStream_t stream, bool* used) {
  *used = false;
  LtDescs d;
  LT(cublasLtMatmulDescCreate(&d.op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "MatmulDescCreate");
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
  cublasLtMatmulHeuristicResult_t res{};
  bool found = false;
  LOWBIT_KRETURN_IF_ERROR(PlanTn(lt, d, CUDA_R_8F_E4M3, dt, m, n, k, workspace_bytes, &res, &found));
  if (!found) return Status::Ok();
  const float alpha = 1.0f, beta = 0.0f;
  return RunTn(lt, d, res, &alpha, w, x, &beta, y, workspace, workspace_bytes, stream, used);
}

Status CublasLtInt8Gemm(cublasLtHandle_t lt, const int8_t* x, const int8_t* w, int64_t m, int64_t n, int64_t k,
                        int32_t* acc, void* workspace, size_t workspace_bytes, cudaStream_t stream, bool* used) {
  *used = false;
  LtDescs d;
  LT(cublasLtMatmulDescCreate(&d.op, CUBLAS_COMPUTE_32I, CUDA_R_32I), "MatmulDescCreate");
  cublasLtMatmulHeuristicResult_t res{};
  bool found = false;
  LOWBIT_KRETURN_IF_ERROR(PlanTn(lt, d, CUDA_R_8I, CUDA_R_32I, m, n, k, workspace_bytes, &res, &found));
  if (!found) return Status::Ok();
  const int32_t alpha = 1, beta = 0;
  return RunTn(lt, d, res, &alpha, w, x, &beta, acc, workspace, workspace_bytes, stream, used);
}

}  // namespace lowbit::kernels::cuda
