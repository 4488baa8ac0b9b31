#ifndef LOWBIT_KERNELS_CUDA_CUBLASLT_GEMM_H_
#define LOWBIT_KERNELS_CUDA_CUBLASLT_GEMM_H_

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>

#include "common/dtype.h"
#include "kernels/status.h"

namespace lowbit::kernels::cuda {

// Y = X · Wᵀ through cuBLASLt's TN form (gemm_cublaslt.cu). Each case and shape is planned once
// (descriptors, layouts and the heuristic's algorithm): the heuristic query costs tens of µs of
// host time, more than an M = 1 GEMM takes on the GPU, so planning per call would leave the GPU
// waiting for the host. *used = false when cuBLASLt has no algorithm for the case (remembered),
// and the caller runs its own kernel. Thread-safe.
class CublasLtGemms {
 public:
  CublasLtGemms(cublasLtHandle_t lt, void* workspace, size_t workspace_bytes);
  ~CublasLtGemms();
  CublasLtGemms(const CublasLtGemms&) = delete;
  CublasLtGemms& operator=(const CublasLtGemms&) = delete;

  // x_scale / w_scale: device f32, one element each (outer_vec = false) or M / N elements.
  Status Fp8(const uint8_t* x, const float* x_scale, const uint8_t* w, const float* w_scale, bool outer_vec, int64_t m,
             int64_t n, int64_t k, DType y_dtype, void* y, cudaStream_t stream, bool* used);

  // acc[M,N] (row-major int32) = X[M,K] · W[N,K]ᵀ, exact (int32 accumulation on the tensor cores).
  Status Int8(const int8_t* x, const int8_t* w, int64_t m, int64_t n, int64_t k, int32_t* acc, cudaStream_t stream,
              bool* used);

  // Plans kept at most; past it they are all dropped and made again as needed (M varies with the
  // batch, so the set of shapes is open-ended).
  static constexpr size_t kMaxPlans = 1024;

 private:
  struct Plan;
  // (int8?, M, N, K, output type, outer-vector scales?, alignment in bytes of the X, W and Y
  // pointers — their lowest set bit, at most 256: the heuristic is told it, so an algorithm that
  // needs more is never chosen, and a misaligned call does not spoil the aligned calls' plan)
  using Key = std::tuple<bool, int64_t, int64_t, int64_t, int, bool, uint32_t>;
  // The plan for `key`, made on first use (Plan::usable false when cuBLASLt has none). Under mu_.
  Status Find(const Key& key, Plan** out);
  Status Run(Plan* plan, const void* alpha, const void* w, const void* x, const void* beta, void* y,
             cudaStream_t stream, bool* used);

  cublasLtHandle_t lt_;
  void* workspace_;
  size_t workspace_bytes_;
  std::mutex mu_;
  std::map<Key, std::unique_ptr<Plan>> plans_;
};

}  // namespace lowbit::kernels::cuda

#endif  // LOWBIT_KERNELS_CUDA_CUBLASLT_GEMM_H_
