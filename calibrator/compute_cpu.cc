// CPU Compute: OpenBLAS for the GEMMs and the Gram update, LAPACKE for the Cholesky factors.
#include <cblas.h>
#include <lapacke.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "absl/strings/str_cat.h"
#include "calibrator/compute.h"

namespace lowbit {
namespace {

// Copies the upper triangle of a row-major n×n matrix into its lower triangle, in tiles so
// both the reads and the strided writes stay in cache.
void MirrorUpperToLower(int64_t n, float* h) {
  constexpr int64_t kTile = 64;
  for (int64_t i0 = 0; i0 < n; i0 += kTile) {
    const int64_t i1 = std::min(n, i0 + kTile);
    for (int64_t j0 = i0; j0 < n; j0 += kTile) {
      const int64_t j1 = std::min(n, j0 + kTile);
      for (int64_t i = i0; i < i1; ++i) {
        for (int64_t j = std::max(j0, i + 1); j < j1; ++j) h[j * n + i] = h[i * n + j];
      }
    }
  }
}

class CpuComputeImpl final : public Compute {
 public:
  std::string Name() const override { return "cpu-openblas"; }

  std::string NumericsId() const override {
    return absl::StrCat(openblas_get_config(), "; core ", openblas_get_corename(), "; threads ",
                        openblas_get_num_threads());
  }

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
    MirrorUpperToLower(k, h);
  }

  absl::Status CholeskyInverseUpper(int64_t n, float* h) override {
    if (n == 0) return absl::OkStatus();
    const int64_t nn = n * n;
    for (int64_t i = 0; i < nn; ++i) {
      if (!std::isfinite(h[i])) {
        return absl::FailedPreconditionError(absl::StrCat("Cholesky of H failed: H[", i / n, ",", i % n,
                                                          "] is not finite"));
      }
    }
    // One Cholesky and one triangular inverse (2n³/3 flops) instead of Cholesky, inverse and a
    // second Cholesky (4n³/3). With J the reversal permutation, factor P = J·H·J = M·Mᵀ (M
    // lower). Then H = R·Rᵀ with R = J·M·J upper, so H⁻¹ = R⁻ᵀ·R⁻¹ and U = R⁻¹ = J·M⁻¹·J is
    // the (unique, positive-diagonal) upper factor with H⁻¹ = UᵀU.
    // J·H·J of a row-major n×n matrix is the whole buffer reversed.
    std::reverse(h, h + nn);
    // LAPACK is column-major: the row-major buffer read column-major is the transpose, so the
    // column-major upper factor (P = UcᵀUc) is the row-major lower M. Calling the column-major
    // routines directly also avoids LAPACKE's row-major transposed copies.
    lapack_int info = LAPACKE_spotrf(LAPACK_COL_MAJOR, 'U', n, h, n);
    if (info != 0) return NotPositiveDefinite("H", info);
    info = LAPACKE_strtri(LAPACK_COL_MAJOR, 'U', 'N', n, h, n);  // Uc⁻¹ = (M⁻¹)ᵀ, row-major M⁻¹
    if (info != 0) return NotPositiveDefinite("H (triangular inverse)", info);
    std::reverse(h, h + nn);  // J·M⁻¹·J: upper, in the row-major upper triangle
    for (int64_t i = 0; i < n; ++i) {
      std::fill(h + i * n, h + i * n + i, 0.0f);
      const float d = h[i * n + i];
      if (!(d > 0.0f) || !std::isfinite(d)) {
        return absl::FailedPreconditionError(absl::StrCat("Cholesky of H failed: diagonal ", i,
                                                          " of the factor is ", d, "; raise dampening_frac"));
      }
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
