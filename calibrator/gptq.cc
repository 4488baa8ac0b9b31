#include "calibrator/gptq.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <memory>
#include <numeric>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/numerics.h"

namespace lowbit {
namespace {

// The in-block column loop is the only hot loop outside BLAS. Build it for AVX-512 and AVX2
// as well as the baseline and pick at load time. This file is built with -ffp-contract=off
// (calibrator/CMakeLists.txt): w − u·e is never fused, so every variant rounds identically.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define LOWBIT_MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define LOWBIT_MULTIVERSION
#endif

// Adding then subtracting 1.5·2^23 rounds a float with |v| < 2^22 to an integer, half to
// even, in the default rounding mode: RoundHalfEven without a libm call, so it vectorizes.
constexpr float kRoundMagic = 12582912.0f;

// Rows of W handled together by the in-block loop (the SIMD width of its inner loops).
constexpr int64_t kLanes = 32;

// 8×8 float tiles transposed with GCC vector extensions (portable: each target_clones variant
// gets its own shuffles). dst row k, columns 0..7 = src rows 0..7, column k.
typedef float V8f __attribute__((vector_size(32)));
typedef int V8i __attribute__((vector_size(32)));
#if defined(__clang__)
#define LOWBIT_SHUFFLE8(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define LOWBIT_SHUFFLE8(a, b, ...) __builtin_shuffle(a, b, V8i{__VA_ARGS__})
#endif

inline void Transpose8x8(const float* __restrict src, int64_t lds, float* __restrict dst, int64_t ldd) {
  V8f r[8], a[8], b[8];
  for (int k = 0; k < 8; ++k) __builtin_memcpy(&r[k], src + k * lds, sizeof(V8f));
  for (int k = 0; k < 8; k += 2) {
    a[k] = LOWBIT_SHUFFLE8(r[k], r[k + 1], 0, 8, 1, 9, 4, 12, 5, 13);
    a[k + 1] = LOWBIT_SHUFFLE8(r[k], r[k + 1], 2, 10, 3, 11, 6, 14, 7, 15);
  }
  for (int k = 0; k < 8; k += 4) {
    b[k] = LOWBIT_SHUFFLE8(a[k], a[k + 2], 0, 1, 8, 9, 4, 5, 12, 13);
    b[k + 1] = LOWBIT_SHUFFLE8(a[k], a[k + 2], 2, 3, 10, 11, 6, 7, 14, 15);
    b[k + 2] = LOWBIT_SHUFFLE8(a[k + 1], a[k + 3], 0, 1, 8, 9, 4, 5, 12, 13);
    b[k + 3] = LOWBIT_SHUFFLE8(a[k + 1], a[k + 3], 2, 3, 10, 11, 6, 7, 14, 15);
  }
  for (int k = 0; k < 4; ++k) {
    const V8f lo = LOWBIT_SHUFFLE8(b[k], b[k + 4], 0, 1, 2, 3, 8, 9, 10, 11);
    const V8f hi = LOWBIT_SHUFFLE8(b[k], b[k + 4], 4, 5, 6, 7, 12, 13, 14, 15);
    __builtin_memcpy(dst + k * ldd, &lo, sizeof(V8f));
    __builtin_memcpy(dst + (k + 4) * ldd, &hi, sizeof(V8f));
  }
}

// One block of columns [i1, i2) for `nrows` (<= kLanes) rows of W. `w` points at W[r0, i1]
// (row stride ldw), `u` at U[i1, i1] (row stride ldu); the scale / zero point of block column c
// for these rows are at st + group[c]·lds (zt likewise; padded to kLanes rows). The block is
// first packed transposed into `wbuf` ([nb, kLanes]: a column's rows contiguous, so the inner
// loops are SIMD over rows and stay in L1). On return the block holds the fake-quantized
// values, `codes` the codes, and `e` ([nrows, lde]) the scaled errors (w − q)/d that the lazy
// update multiplies. Returns Σ ((w − q)/d)².
LOWBIT_MULTIVERSION
double ProcessBlockLanes(float* __restrict w, int64_t ldw, int64_t nrows, int64_t nb, const float* __restrict u,
                         int64_t ldu, const int32_t* __restrict group, const float* __restrict st,
                         const float* __restrict zt, int64_t lds, bool fp8, float qmin, float qmax,
                         float* __restrict e, int64_t lde, int8_t* __restrict codes, int64_t ldc,
                         float* __restrict wbuf, float* __restrict ebuf, int8_t* __restrict cbuf) {
  const bool tiles = nrows == kLanes && nb % 8 == 0;
  if (tiles) {
    for (int64_t t = 0; t < kLanes; t += 8) {
      for (int64_t i = 0; i < nb; i += 8) Transpose8x8(w + t * ldw + i, ldw, wbuf + i * kLanes + t, kLanes);
    }
  } else {
    for (int64_t t = 0; t < nrows; ++t) {
      for (int64_t i = 0; i < nb; ++i) wbuf[i * kLanes + t] = w[t * ldw + i];
    }
    for (int64_t t = nrows; t < kLanes; ++t) {
      for (int64_t i = 0; i < nb; ++i) wbuf[i * kLanes + t] = 0.0f;
    }
  }
  float lanes[kLanes] = {};
  for (int64_t i = 0; i < nb; ++i) {
    float* __restrict wi = wbuf + i * kLanes;
    float* __restrict err = ebuf + i * kLanes;
    int8_t* __restrict code = cbuf + i * kLanes;
    const float* __restrict s = st + group[i] * lds;
    const float* __restrict z = zt + group[i] * lds;
    const float d = u[i * ldu + i];
    if (fp8) {
      for (int64_t t = 0; t < kLanes; ++t) {
        const uint8_t c = QuantizeFp8(wi[t], s[t], DType::kF32);
        const float q = DequantizeFp8(c, s[t]);
        err[t] = (wi[t] - q) / d;
        wi[t] = q;
        code[t] = static_cast<int8_t>(c);
      }
    } else {
      for (int64_t t = 0; t < kLanes; ++t) {
        float v = wi[t] / s[t] + z[t];
        v = std::min(std::max(v, qmin), qmax);
        const float r = (v + kRoundMagic) - kRoundMagic;
        const float q = (r - z[t]) * s[t];
        err[t] = (wi[t] - q) / d;
        wi[t] = q;
        code[t] = static_cast<int8_t>(static_cast<int32_t>(r));
      }
    }
    for (int64_t t = 0; t < kLanes; ++t) lanes[t] += err[t] * err[t];
    // Propagate this column's error to the later columns of the block.
    for (int64_t j = i + 1; j < nb; ++j) {
      const float uij = u[i * ldu + j];
      float* __restrict wj = wbuf + j * kLanes;
      for (int64_t t = 0; t < kLanes; ++t) wj[t] -= uij * err[t];
    }
  }
  if (tiles) {
    for (int64_t i = 0; i < nb; i += 8) {
      for (int64_t t = 0; t < kLanes; t += 8) {
        Transpose8x8(wbuf + i * kLanes + t, kLanes, w + t * ldw + i, ldw);
        Transpose8x8(ebuf + i * kLanes + t, kLanes, e + t * lde + i, lde);
      }
    }
  } else {
    for (int64_t t = 0; t < nrows; ++t) {
      for (int64_t i = 0; i < nb; ++i) {
        w[t * ldw + i] = wbuf[i * kLanes + t];
        e[t * lde + i] = ebuf[i * kLanes + t];
      }
    }
  }
  for (int64_t t = 0; t < nrows; ++t) {
    for (int64_t i = 0; i < nb; ++i) codes[t * ldc + i] = cbuf[i * kLanes + t];
  }
  double loss = 0;
  for (float v : lanes) loss += v;
  return loss;
}

// Row by row, in place, for a [rows, cols] matrix: row[j] = old row[perm[j]] (gather) or
// row[perm[j]] = old row[j] (scatter). Row-local, so the random access stays in cache.
template <typename T>
void PermuteColumns(T* m, int64_t rows, int64_t cols, const std::vector<int64_t>& perm, bool gather) {
  std::vector<T> scratch(cols);
  for (int64_t r = 0; r < rows; ++r) {
    T* row = m + r * cols;
    if (gather) {
      for (int64_t j = 0; j < cols; ++j) scratch[j] = row[perm[j]];
    } else {
      for (int64_t j = 0; j < cols; ++j) scratch[perm[j]] = row[j];
    }
    std::copy(scratch.begin(), scratch.end(), row);
  }
}

absl::Status Invalid(const std::string& module, const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat(module, ": GPTQ: ", why));
}

}  // namespace

absl::StatusOr<GptqResult> QuantizeLinearGptq(const std::string& module, std::span<const float> weight, int64_t rows,
                                              int64_t cols, std::vector<float> hessian, const QuantArgs& weight_args,
                                              DType scale_dtype, const GptqOptions& options, Compute& compute) {
  const auto start = std::chrono::steady_clock::now();
  auto lap = [last = start]() mutable {
    const auto now = std::chrono::steady_clock::now();
    const double s = std::chrono::duration<double>(now - last).count();
    last = now;
    return s;
  };
  const int64_t N = rows, K = cols;
  const QuantArgs& args = weight_args;
  const Strategy strategy = args.strategy_or_tensor();
  const bool fp8 = args.type == QuantType::kFloat;

  // ---- Validation --------------------------------------------------------------------------
  if (N <= 0 || K <= 0) return Invalid(module, absl::StrCat("weight shape [", N, ", ", K, "] is empty"));
  if (static_cast<int64_t>(weight.size()) != N * K) {
    return Invalid(module, absl::StrCat("weight has ", weight.size(), " values, expected rows·cols = ", N, "·", K));
  }
  if (static_cast<int64_t>(hessian.size()) != K * K) {
    return Invalid(module, absl::StrCat("Hessian has ", hessian.size(), " values, expected [K, K] = [", K, ", ", K,
                                        "] (K = in_features = weight columns)"));
  }
  if (options.block_size <= 0) return Invalid(module, absl::StrCat("block_size must be > 0, got ", options.block_size));
  if (!(options.dampening_frac >= 0) || !std::isfinite(options.dampening_frac)) {
    return Invalid(module, absl::StrCat("dampening_frac must be a finite value >= 0, got ", options.dampening_frac));
  }
  if (strategy != Strategy::kTensor && strategy != Strategy::kChannel && strategy != Strategy::kGroup) {
    return absl::UnimplementedError(absl::StrCat(module, ": GPTQ: weight strategy ", std::string(StrategyName(strategy)),
                                                 " is not supported (use tensor, channel or group)"));
  }
  if (fp8 ? args.num_bits != 8 : (args.num_bits < 2 || args.num_bits > 8)) {
    return absl::UnimplementedError(absl::StrCat(module, ": GPTQ: ", fp8 ? "float" : "int", " weights with num_bits ",
                                                 args.num_bits, " are not supported (int 2..8 bits, float 8 bits)"));
  }
  int64_t group_size = K;
  if (strategy == Strategy::kGroup) {
    group_size = args.group_size.value_or(0);
    if (group_size <= 0) return Invalid(module, "group strategy needs group_size > 0");
    if (K % group_size != 0) {
      return Invalid(module, absl::StrCat("in_features ", K, " is not a multiple of group_size ", group_size));
    }
  }
  for (int64_t i = 0; i < N * K; ++i) {
    if (!std::isfinite(weight[i])) {
      return Invalid(module, absl::StrCat("weight[", i / K, ", ", i % K, "] = ", weight[i], " is not finite"));
    }
  }

  GptqResult result;
  ActOrder actorder = args.actorder;
  if (actorder == ActOrder::kGroup && strategy != Strategy::kGroup) {
    absl::StrAppend(&result.warning, module, ": actorder group needs the group strategy; quantizing without "
                                             "activation ordering. ");
    actorder = ActOrder::kNone;
  }
  if (actorder == ActOrder::kGroup && fp8) {
    return absl::UnimplementedError(absl::StrCat(module, ": GPTQ: actorder group with float weights is not supported"));
  }

  // ---- Activation order ----------------------------------------------------------------------
  std::vector<int64_t> perm(K);
  std::iota(perm.begin(), perm.end(), 0);
  if (actorder != ActOrder::kNone) {
    // argsort(diag(H), descending); ties keep index order; NaN sorts last.
    auto key = [&](int64_t i) {
      float d = hessian[i * K + i];
      return std::isnan(d) ? -std::numeric_limits<float>::infinity() : d;
    };
    std::stable_sort(perm.begin(), perm.end(), [&](int64_t a, int64_t b) { return key(a) > key(b); });
    std::vector<float> hp(K * K);
    for (int64_t a = 0; a < K; ++a) {
      const float* src = hessian.data() + perm[a] * K;
      float* dst = hp.data() + a * K;
      for (int64_t b = 0; b < K; ++b) dst[b] = src[perm[b]];
    }
    hessian = std::move(hp);
  }
  std::vector<float>& H = hessian;  // permuted; becomes U in place

  // ---- Quantization parameters, from the original (un-updated) weight -----------------------
  absl::StatusOr<WeightQParams> qp;
  if (actorder == ActOrder::kGroup) {
    std::vector<float> wp(N * K);
    for (int64_t r = 0; r < N; ++r) {
      for (int64_t j = 0; j < K; ++j) wp[r * K + j] = weight[r * K + perm[j]];
    }
    qp = ObserveWeight(wp, N, K, args, scale_dtype);
  } else {
    qp = ObserveWeight(weight, N, K, args, scale_dtype);
  }
  if (!qp.ok()) return absl::Status(qp.status().code(), absl::StrCat(module, ": ", std::string(qp.status().message())));
  const int64_t groups = qp->groups;
  // Group of each column in processing order.
  std::vector<int32_t> group_of(K, 0);
  if (strategy == Strategy::kGroup) {
    for (int64_t j = 0; j < K; ++j) {
      group_of[j] = static_cast<int32_t>((actorder == ActOrder::kWeight ? perm[j] : j) / group_size);
    }
  }
  // Scales and zero points transposed to [groups, NP] so a column's are contiguous over rows,
  // padded to a multiple of kLanes rows (scale 1, zero point 0).
  const int64_t NP = (N + kLanes - 1) / kLanes * kLanes;
  std::vector<float> st(groups * NP, 1.0f), zt(groups * NP, 0.0f);
  for (int64_t g = 0; g < groups; ++g) {
    for (int64_t r = 0; r < N; ++r) {
      QParam p = qp->at(r, g);
      st[g * NP + r] = p.scale;
      zt[g * NP + r] = static_cast<float>(p.zero_point);
    }
  }

  // ---- Working copy of W [N, K] in processing order; becomes the fake-quantized weight --------
  const bool permuted = actorder != ActOrder::kNone;
  result.dequantized.assign(weight.begin(), weight.end());
  float* W = result.dequantized.data();
  if (permuted) PermuteColumns(W, N, K, perm, /*gather=*/true);
  result.phases.prepare = lap();

  // ---- Dead inputs, dampening, inverse factor -------------------------------------------------
  for (int64_t j = 0; j < K; ++j) {
    if (H[j * K + j] == 0.0f) {
      H[j * K + j] = 1.0f;
      for (int64_t r = 0; r < N; ++r) W[r * K + j] = 0.0f;
    }
  }
  double diag_sum = 0;
  for (int64_t j = 0; j < K; ++j) diag_sum += H[j * K + j];
  const float damp = static_cast<float>(options.dampening_frac * (diag_sum / static_cast<double>(K)));
  for (int64_t j = 0; j < K; ++j) H[j * K + j] += damp;
  if (absl::Status st_chol = compute.CholeskyInverseUpper(K, H.data()); !st_chol.ok()) {
    absl::StrAppend(&result.warning, module, ": failed to invert the Hessian (", std::string(st_chol.message()),
                    "); falling back to round-to-nearest for this module. Consider increasing dampening_frac or "
                    "the number of calibration samples.");
    result.fell_back_to_rtn = true;
    std::fill(H.begin(), H.end(), 0.0f);
    for (int64_t j = 0; j < K; ++j) H[j * K + j] = 1.0f;
  }
  const float* U = H.data();
  result.phases.factor = lap();

  // ---- Blocks ---------------------------------------------------------------------------------
  QuantizedLinear& q = result.quantized;
  int8_t* codes;
  if (fp8) {
    q.fp8_codes.resize(N * K);
    codes = reinterpret_cast<int8_t*>(q.fp8_codes.data());
  } else {
    q.int_codes.resize(N * K);
    codes = q.int_codes.data();
  }
  const int64_t B = std::min(options.block_size, K);
  std::unique_ptr<float[]> err(new float[N * B]);  // (w − q)/d of the block's columns, [N, nb]
  std::vector<float> wbuf(B * kLanes), ebuf(B * kLanes);
  std::vector<int8_t> cbuf(B * kLanes);
  const float qmin = fp8 ? 0.0f : static_cast<float>(args.qmin());
  const float qmax = fp8 ? 0.0f : static_cast<float>(args.qmax());
  double loss2 = 0;  // Σ ((w − q)/d)²
  for (int64_t i1 = 0; i1 < K; i1 += B) {
    const int64_t i2 = std::min(K, i1 + B), nb = i2 - i1;
    for (int64_t r0 = 0; r0 < N; r0 += kLanes) {
      loss2 += ProcessBlockLanes(W + r0 * K + i1, K, std::min(kLanes, N - r0), nb, U + i1 * K + i1, K,
                                 group_of.data() + i1, st.data() + r0, zt.data() + r0, NP, fp8, qmin, qmax,
                                 err.get() + r0 * nb, nb, codes + r0 * K + i1, K, wbuf.data(), ebuf.data(),
                                 cbuf.data());
    }
    result.phases.columns += lap();
    if (i2 < K) {
      // Lazy update of every later column: W[:, i2:] −= Err · U[i1:i2, i2:].
      compute.Gemm(/*transpose_b=*/false, N, K - i2, nb, -1.0f, err.get(), nb, U + i1 * K + i2, K, 1.0f, W + i2, K);
      result.phases.lazy_updates += lap();
    }
  }
  result.loss = loss2 / 2;

  // ---- Back to the original column order ------------------------------------------------------
  q.module = module;
  q.rows = N;
  q.cols = K;
  q.weight_args = args;
  q.qparams = *std::move(qp);
  if (permuted) {
    PermuteColumns(W, N, K, perm, /*gather=*/false);
    PermuteColumns(codes, N, K, perm, /*gather=*/false);
  }
  if (actorder == ActOrder::kGroup) {
    // Original column perm[j] was processed j-th, in group j / group_size.
    q.g_idx.resize(K);
    for (int64_t j = 0; j < K; ++j) q.g_idx[perm[j]] = static_cast<int32_t>(j / group_size);
  }
  result.phases.finish = lap();
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

double OutputError(Compute& compute, std::span<const float> x, int64_t tokens, std::span<const float> a,
                   std::span<const float> b, int64_t rows, int64_t cols) {
  std::vector<float> diff(rows * cols);
  for (int64_t i = 0; i < rows * cols; ++i) diff[i] = a[i] - b[i];
  std::vector<float> y(tokens * rows);
  compute.Gemm(/*transpose_b=*/true, tokens, rows, cols, 1.0f, x.data(), cols, diff.data(), cols, 0.0f, y.data(),
               rows);
  double sum = 0;
  for (float v : y) sum += static_cast<double>(v) * v;
  return std::sqrt(sum);
}

double HessianWeightedError(Compute& compute, std::span<const float> hessian, std::span<const float> a,
                            std::span<const float> b, int64_t rows, int64_t cols) {
  std::vector<float> diff(rows * cols), t(rows * cols);
  for (int64_t i = 0; i < rows * cols; ++i) diff[i] = a[i] - b[i];
  compute.Gemm(/*transpose_b=*/false, rows, cols, cols, 1.0f, diff.data(), cols, hessian.data(), cols, 0.0f,
               t.data(), cols);
  double sum = 0;
  for (int64_t i = 0; i < rows * cols; ++i) sum += static_cast<double>(t[i]) * diff[i];
  return sum;
}

}  // namespace lowbit
