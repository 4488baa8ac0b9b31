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
// the caller falls back to its own kernel. Each case and shape is planned once and kept
// (CublasLtGemms, cublaslt_gemm.h). Untested on a GPU so far (no device in the sessions that
// wrote it).
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

cudaDataType_t OutType(DType y) { return y == DType::kF32 ? CUDA_R_32F : y == DType::kF16 ? CUDA_R_16F : CUDA_R_16BF; }

// The alignment the three pointers share: the lowest set bit of their addresses, at most 256.
uint32_t CommonAlignment(const void* x, const void* w, const void* y) {
  const uintptr_t bits =
      reinterpret_cast<uintptr_t>(x) | reinterpret_cast<uintptr_t>(w) | reinterpret_cast<uintptr_t>(y) | uintptr_t{256};
  return static_cast<uint32_t>(bits & (~bits + 1));
}
}  // namespace

struct CublasLtGemms::Plan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulHeuristicResult_t res{};
  bool usable = false;  // cuBLASLt has an algorithm for the case and has not refused it
  bool ran = false;     // a matmul with it has been enqueued
  ~Plan() {
    if (d) cublasLtMatrixLayoutDestroy(d);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (op) cublasLtMatmulDescDestroy(op);
  }
};

CublasLtGemms::CublasLtGemms(cublasLtHandle_t lt, void* workspace, size_t workspace_bytes)
    : lt_(lt), workspace_(workspace), workspace_bytes_(workspace_bytes) {}

CublasLtGemms::~CublasLtGemms() = default;

// The descriptor (compute type; outer-vector scale modes for FP8 with vectors), the TN layouts
// (A = W, K×N column-major = W row-major; B = X, K×M column-major = X row-major; D N×M
// column-major = Y row-major) and the heuristic's first algorithm within the workspace.
Status CublasLtGemms::Find(const Key& key, Plan** out) {
  *out = nullptr;
  if (auto it = plans_.find(key); it != plans_.end()) {
    *out = it->second.get();
    return Status::Ok();
  }
  if (plans_.size() >= kMaxPlans) plans_.clear();
  const auto [int8, m, n, k, dt_int, outer, align] = key;
  const auto dt = static_cast<cudaDataType_t>(dt_int);
  const cudaDataType_t ab = int8 ? CUDA_R_8I : CUDA_R_8F_E4M3;
  auto plan = std::make_unique<Plan>();
  Plan& p = *plan;
  if (int8) {
    LT(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32I, CUDA_R_32I), "MatmulDescCreate");
  } else {
    LT(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "MatmulDescCreate");
  }
  bool refused = false;
  if (outer) {
    // A cuBLASLt without outer-vector scaling (< 12.9) refuses the attribute: fall back then.
    const int32_t mode = CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F;
    refused = cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &mode, sizeof mode) !=
                  CUBLAS_STATUS_SUCCESS ||
              cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &mode, sizeof mode) !=
                  CUBLAS_STATUS_SUCCESS;
  }
  if (!refused) {
    const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    LT(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta), "TRANSA");
    LT(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb), "TRANSB");
    LT(cublasLtMatrixLayoutCreate(&p.a, ab, k, n, k), "layout A");
    LT(cublasLtMatrixLayoutCreate(&p.b, ab, k, m, k), "layout B");
    LT(cublasLtMatrixLayoutCreate(&p.d, dt, n, m, n), "layout D");
    cublasLtMatmulPreference_t pref = nullptr;
    LT(cublasLtMatmulPreferenceCreate(&pref), "PreferenceCreate");
    cublasStatus_t ps = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                             &workspace_bytes_, sizeof workspace_bytes_);
    for (const cublasLtMatmulPreferenceAttributes_t attr :
         {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
          CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES}) {
      if (ps == CUBLAS_STATUS_SUCCESS) ps = cublasLtMatmulPreferenceSetAttribute(pref, attr, &align, sizeof align);
    }
    int count = 0;
    if (ps == CUBLAS_STATUS_SUCCESS) {
      ps = cublasLtMatmulAlgoGetHeuristic(lt_, p.op, p.a, p.b, p.d, p.d, pref, 1, &p.res, &count);
    }
    cublasLtMatmulPreferenceDestroy(pref);
    p.usable = ps == CUBLAS_STATUS_SUCCESS && count > 0;
  }
  *out = plan.get();
  plans_.emplace(key, std::move(plan));
  return Status::Ok();
}

// The matmul itself. NOT_SUPPORTED — and, on a plan's first matmul, INVALID_VALUE or
// ARCH_MISMATCH (what cuBLASLt answers for a type or scale-mode combination it has no kernel for)
// — marks the plan unusable and leaves *used false: the caller falls back. Other failures are
// errors; so is a refusal while the stream is being captured into a CUDA graph (what capture
// allows is not what a plain launch allows: the plan is not given up on that evidence).
Status CublasLtGemms::Run(Plan* p, const void* alpha, const void* w, const void* x, const void* beta, void* y,
                          cudaStream_t stream, bool* used) {
  const cublasStatus_t s = cublasLtMatmul(lt_, p->op, alpha, w, p->a, x, p->b, beta, y, p->d, y, p->d, &p->res.algo,
                                          workspace_, workspace_bytes_, stream);
  if (s == CUBLAS_STATUS_NOT_SUPPORTED ||
      (!p->ran && (s == CUBLAS_STATUS_INVALID_VALUE || s == CUBLAS_STATUS_ARCH_MISMATCH))) {
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(stream, &capture) == cudaSuccess && capture != cudaStreamCaptureStatusNone)
      return Internal("cuBLASLt refused a matmul during stream capture (status " + std::to_string(static_cast<int>(s)) +
                      ")");
    p->usable = false;
    return Status::Ok();
  }
  LT(s, "Matmul");
  p->ran = true;
  *used = true;
  return Status::Ok();
}

Status CublasLtGemms::Fp8(const uint8_t* x, const float* x_scale, const uint8_t* w, const float* w_scale,
                          bool outer_vec, int64_t m, int64_t n, int64_t k, DType y_dtype, void* y, cudaStream_t stream,
                          bool* used) {
  *used = false;
  std::lock_guard<std::mutex> lock(mu_);
  Plan* p = nullptr;
  LOWBIT_KRETURN_IF_ERROR(
      Find(Key{false, m, n, k, static_cast<int>(OutType(y_dtype)), outer_vec, CommonAlignment(x, w, y)}, &p));
  if (!p->usable) return Status::Ok();
  // The scale pointers change from call to call; the kernel takes their values at launch.
  LT(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &w_scale, sizeof w_scale), "A_SCALE");
  LT(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &x_scale, sizeof x_scale), "B_SCALE");
  const float alpha = 1.0f, beta = 0.0f;
  return Run(p, &alpha, w, x, &beta, y, stream, used);
}

Status CublasLtGemms::Int8(const int8_t* x, const int8_t* w, int64_t m, int64_t n, int64_t k, int32_t* acc,
                           cudaStream_t stream, bool* used) {
  *used = false;
  std::lock_guard<std::mutex> lock(mu_);
  Plan* p = nullptr;
  LOWBIT_KRETURN_IF_ERROR(
      Find(Key{true, m, n, k, static_cast<int>(CUDA_R_32I), false, CommonAlignment(x, w, acc)}, &p));
  if (!p->usable) return Status::Ok();
  const int32_t alpha = 1, beta = 0;
  return Run(p, &alpha, w, x, &beta, acc, stream, used);
}

}  // namespace lowbit::kernels::cuda
