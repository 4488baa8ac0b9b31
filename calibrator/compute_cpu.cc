// CPU Compute: OpenBLAS for the GEMMs and the Gram update, LAPACKE for the Cholesky factors.
#include <cblas.h>
#include <lapacke.h>

#include <string>

#include "absl/strings/str_cat.h"
#include "calibrator/compute.h"

namespace lowbit {
namespace {

class CpuComputeImpl final : public Compute {
 public:
  std::string Name() const override { return "cpu-openblas"; }

  void Gemm(bool transpose_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
            const float* b, int64_t ldb, float beta, float* c, int64_t ldc) override {
    if (m == 0 || n == 0) return;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, transpose_b ? CblasTrans : CblasNoTrans, m, n, k, alpha, a,
                lda, b, ldb, beta, c, ldc);
  }

  void AddGram(int64_t rows, int64_t k, float alpha, const float* x, float* h) override {
    if (rows == 0 || k == 0) return;
    // Upper triangle of H (row-major) += alpha · XᵀX, then mirror it into the lower triangle.
    cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, k, rows, alpha, x, k, 1.0f, h, k);
    for (int64_t i = 0; i < k; ++i) {
      for (int64_t j = i + 1; j < k; ++j) h[j * k + i] = h[i * k + j];
    }
  }

  absl::Status CholeskyInverseUpper(int64_t n, float* h) override {
    if (n == 0) return absl::OkStatus();
    // H = LLᵀ (lower), H⁻¹ from L, then H⁻¹ = UᵀU (upper). Row-major lower == column-major
    // upper, so we ask LAPACK for the triangles we want directly in row-major layout.
    lapack_int info = LAPACKE_spotrf(LAPACK_ROW_MAJOR, 'L', n, h, n);
    if (info != 0) return NotPositiveDefinite("H", info);
    info = LAPACKE_spotri(LAPACK_ROW_MAJOR, 'L', n, h, n);
    if (info != 0) return NotPositiveDefinite("H (inverse)", info);
    // spotri leaves H⁻¹ in the lower triangle; mirror it to the upper one.
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = i + 1; j < n; ++j) h[i * n + j] = h[j * n + i];
    }
    info = LAPACKE_spotrf(LAPACK_ROW_MAJOR, 'U', n, h, n);
    if (info != 0) return NotPositiveDefinite("H⁻¹", info);
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = 0; j < i; ++j) h[i * n + j] = 0.0f;
    }
    return absl::OkStatus();
  }

 private:
  static absl::Status NotPositiveDefinite(const char* what, lapack_int info) {
    return absl::FailedPreconditionError(
        absl::StrCat("Cholesky of ", what, " failed (LAPACK info ", info,
                     "): the matrix is not positive definite; raise dampening_frac"));
  }
};

}  // namespace

Compute& CpuCompute() {
  static CpuComputeImpl* impl = new CpuComputeImpl();
  return *impl;
}

}  // namespace lowbit
