// The heavy math of calibration — the forward pass's GEMMs, Hessian accumulation, the Cholesky
// factor GPTQ needs and GPTQ's block updates — behind one interface. Algorithms call only this,
// so a CUDA implementation (cuBLAS / cuSOLVER) can replace the CPU one without touching them.
// Matrices are row-major float32 with explicit leading dimensions (elements between rows).
#ifndef LOWBIT_CALIBRATOR_COMPUTE_H_
#define LOWBIT_CALIBRATOR_COMPUTE_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"

namespace lowbit {

class Compute {
 public:
  virtual ~Compute() = default;

  // "cpu-openblas", "cuda", ...
  virtual std::string Name() const = 0;

  // What besides the inputs decides the bits of the results: for OpenBLAS its build, the kernel it
  // picked for this CPU and its thread count (another count changes the last bits of ssyrk,
  // sgemm and strtri). Resume state saved under one identity is not reused under another.
  virtual std::string NumericsId() const = 0;

  // C[m,n] = alpha · A[m,k] · op(B) + beta · C, where op(B) = Bᵀ for a [n,k] B when
  // `transpose_b`, else B is [k,n]. beta = 0 ignores C's previous contents (NaN included).
  virtual void Gemm(bool transpose_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                    int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                    int64_t ldc) = 0;

  // H[k,k] += alpha · Xᵀ X for X [rows, k] (leading dimension k). H is kept full (both
  // triangles valid) so callers can read any element.
  virtual void AddGram(int64_t rows, int64_t k, float alpha, const float* x, float* h) = 0;

  // In place: the symmetric positive-definite H [n,n] becomes U, the upper Cholesky factor of
  // H⁻¹ (H⁻¹ = UᵀU; the strict lower triangle is zeroed). This is GPTQ's "Hinv". Returns
  // FailedPrecondition when H is not positive definite or holds a non-finite value; H's
  // contents are then unspecified.
  virtual absl::Status CholeskyInverseUpper(int64_t n, float* h) = 0;
};

// The process-wide CPU implementation (OpenBLAS + LAPACKE). Thread-safe: it holds no state.
Compute& CpuCompute();

}  // namespace lowbit

#endif  // LOWBIT_CALIBRATOR_COMPUTE_H_
