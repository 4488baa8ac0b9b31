// The CPU backend: the reference ("cpu-ref") and the fast paths ("cpu"; "cpu-generic" runs the
// same blocked driver with portable C++ micro-kernels instead of AVX-512). "cpu" picks, at
// creation, AVX-512 VNNI/BF16 micro-kernels when the CPU has them, else AVX2 + FMA + F16C ones
// (see "AVX2" below; "cpu-avx2" forces them), else the portable ones.
//
// Fast GEMM design (one driver for the three GEMMs):
//   * Weights are packed at load into panels of 32 output columns; within a panel, for each
//     "k-group" the 32 columns' values for that group lie in 128 contiguous bytes (two zmm):
//       W8A8  a k-group is 4 int8 (one VNNI dword), accumulated with vpdpbusd in int32;
//             activations are shifted to u8 (x + 128) and 128·Σ_k W[n,k] is subtracted after;
//       FP8   a k-group is 2 bf16 (E4M3 → bf16 is exact), accumulated with vdpbf16ps in f32;
//       W4A16 int4 codes stay packed (2 per byte); each k-block of a panel is dequantized to
//             f32 (rounded to the activation dtype, as the reference does) right before use and
//             accumulated with FMA in f32.
//   * Tasks are (128 rows × 128 columns) tiles spread over a thread pool; inside a task, for
//     each k-block of 256 groups the activations are packed once (u8 quads / bf16 pairs / f32,
//     with the act-order permutation applied for W4A16), then an 8-row × 32-column register
//     tile runs over every row block of every panel (AVX2: 4 × 8 W8A8, 6 × 16 f32 for W4A16 and widened FP8;
//     a single row takes all 32 columns at once).
// The W8A8 epilogue runs the same f32 operations in the same order as the reference, so its
// output is bit-exact; the FP8 and W4A16 sums differ from the exact reference by f32 rounding.
#include "kernels/cpu/cpu_backend.h"

#include <cpuid.h>
#include <immintrin.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <vector>

#include "common/dtype.h"
#include "kernels/backend.h"
#include "kernels/cpu/avx2_int8_tile.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/reference.h"
#include "kernels/validate.h"

namespace lowbit::kernels {
namespace {

constexpr int kNR = 32;       // columns per panel
constexpr int kMR = 8;        // rows per register tile
constexpr int64_t kGB = 256;  // k-groups per k-block
constexpr int64_t kMB = 128;  // rows per task
constexpr int64_t kPanelsPerTask = 4;
constexpr int64_t kMaxKInt8 = 65536;  // Σ (x+128)·w over K must fit int32

#define LB_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx512bf16,f16c,fma")))

template <class T>
struct AlignedAlloc {
  using value_type = T;
  AlignedAlloc() = default;
  template <class U>
  AlignedAlloc(const AlignedAlloc<U>&) {}
  T* allocate(size_t n) {
    size_t bytes = ((n * sizeof(T)) + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, bytes == 0 ? 64 : bytes);
    if (!p) throw std::bad_alloc();
    return static_cast<T*>(p);
  }
  void deallocate(T* p, size_t) { std::free(p); }
  bool operator==(const AlignedAlloc&) const { return true; }
};
template <class T>
using AVec = std::vector<T, AlignedAlloc<T>>;

enum class Kind { kI8, kFp8, kW4 };
enum class Isa { kGeneric, kAvx2, kAvx512 };

// ---------------------------------------------------------------------------------------------
// Small conversions.

inline float Bf16BitsToFloat(uint16_t b) { return std::bit_cast<float>(static_cast<uint32_t>(b) << 16); }

// float -> E4M3 for v already clamped to [-448, 448] (or NaN); RNE, identical to
// FloatToFp8E4M3 on that range (the backend-ops test checks it bit for bit).
inline uint8_t FastFp8(float v) {
  uint32_t b = std::bit_cast<uint32_t>(v);
  const uint8_t sign = static_cast<uint8_t>((b >> 24) & 0x80u);
  b &= 0x7FFFFFFFu;
  if (b > 0x7F800000u) return sign | 0x7F;
  if (b < 0x3C800000u) {  // below 2^-6: E4M3 subnormals, steps of 2^-9
    const float a = std::bit_cast<float>(b) * 512.0f;
    return sign | static_cast<uint8_t>(static_cast<int>(std::nearbyint(a)));
  }
  b += 0x7FFFFu + ((b >> 20) & 1u);
  const uint32_t e = (b >> 23) - 120u;
  return sign | static_cast<uint8_t>((e << 3) | ((b >> 20) & 7u));
}

struct Fp8Tables {
  uint16_t bf16[256];
  Fp8Tables() {
    for (int i = 0; i < 256; ++i)
      bf16[i] = static_cast<uint16_t>(std::bit_cast<uint32_t>(Fp8E4M3ToFloat(static_cast<uint8_t>(i))) >> 16);
  }
};
const Fp8Tables& Fp8Lut() {
  static const Fp8Tables t;
  return t;
}

// A row of activations as f32.
void RowToF32Generic(DType dt, const void* x, int64_t k, float* out) {
  for (int64_t i = 0; i < k; ++i) out[i] = ref::LoadFloat(dt, x, i);
}

LB_AVX512 void RowToF32Avx(DType dt, const void* x, int64_t k, float* out) {
  int64_t i = 0;
  if (dt == DType::kF32) {
    std::memcpy(out, x, k * sizeof(float));
    return;
  }
  const uint16_t* p = static_cast<const uint16_t*>(x);
  if (dt == DType::kBF16) {
    for (; i + 16 <= k; i += 16) {
      __m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i)));
      _mm512_storeu_ps(out + i, _mm512_castsi512_ps(_mm512_slli_epi32(v, 16)));
    }
  } else {
    for (; i + 16 <= k; i += 16)
      _mm512_storeu_ps(out + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i))));
  }
  for (; i < k; ++i) out[i] = ref::LoadFloat(dt, x, i);
}

// ---------------------------------------------------------------------------------------------
// Micro-kernels: C[MR][32] (+)= X[MR][groups] · Wpanel[groups][32]. X elements and C elements
// are 32-bit (u8 quads / bf16 pairs / f32; int32 / f32 accumulators).

using MicroFn = void (*)(const uint32_t* x, int64_t xs, const uint8_t* w, int64_t groups, uint32_t* c, int64_t cs,
                         bool accumulate);

template <Kind K, int MR>
void MicroGeneric(const uint32_t* x, int64_t xs, const uint8_t* w, int64_t groups, uint32_t* c, int64_t cs,
                  bool accumulate) {
  for (int r = 0; r < MR; ++r) {
    if (K == Kind::kI8) {
      int32_t acc[kNR];
      for (int j = 0; j < kNR; ++j) acc[j] = accumulate ? static_cast<int32_t>(c[r * cs + j]) : 0;
      for (int64_t g = 0; g < groups; ++g) {
        const uint32_t xv = x[r * xs + g];
        const int8_t* wg = reinterpret_cast<const int8_t*>(w + g * 128);
        for (int j = 0; j < kNR; ++j)
          for (int t = 0; t < 4; ++t) acc[j] += static_cast<int32_t>((xv >> (8 * t)) & 0xFF) * wg[j * 4 + t];
      }
      for (int j = 0; j < kNR; ++j) c[r * cs + j] = static_cast<uint32_t>(acc[j]);
    } else {
      float acc[kNR];
      for (int j = 0; j < kNR; ++j) acc[j] = accumulate ? std::bit_cast<float>(c[r * cs + j]) : 0.0f;
      for (int64_t g = 0; g < groups; ++g) {
        const uint32_t xv = x[r * xs + g];
        if (K == Kind::kFp8) {
          const uint16_t* wg = reinterpret_cast<const uint16_t*>(w + g * 128);
          const float x0 = Bf16BitsToFloat(static_cast<uint16_t>(xv & 0xFFFF));
          const float x1 = Bf16BitsToFloat(static_cast<uint16_t>(xv >> 16));
          for (int j = 0; j < kNR; ++j) acc[j] += x0 * Bf16BitsToFloat(wg[2 * j]) + x1 * Bf16BitsToFloat(wg[2 * j + 1]);
        } else {
          const float* wg = reinterpret_cast<const float*>(w + g * 128);
          const float xf = std::bit_cast<float>(xv);
          for (int j = 0; j < kNR; ++j) acc[j] += xf * wg[j];
        }
      }
      for (int j = 0; j < kNR; ++j) c[r * cs + j] = std::bit_cast<uint32_t>(acc[j]);
    }
  }
}

template <int MR>
LB_AVX512 void MicroI8Avx(const uint32_t* x, int64_t xs, const uint8_t* w, int64_t groups, uint32_t* c, int64_t cs,
                          bool accumulate) {
  __m512i acc0[MR], acc1[MR];
  for (int r = 0; r < MR; ++r) {
    acc0[r] = accumulate ? _mm512_loadu_si512(c + r * cs) : _mm512_setzero_si512();
    acc1[r] = accumulate ? _mm512_loadu_si512(c + r * cs + 16) : _mm512_setzero_si512();
  }
  for (int64_t g = 0; g < groups; ++g) {
    const __m512i w0 = _mm512_load_si512(w + g * 128);
    const __m512i w1 = _mm512_load_si512(w + g * 128 + 64);
    for (int r = 0; r < MR; ++r) {
      const __m512i b = _mm512_set1_epi32(static_cast<int>(x[r * xs + g]));
      acc0[r] = _mm512_dpbusd_epi32(acc0[r], b, w0);
      acc1[r] = _mm512_dpbusd_epi32(acc1[r], b, w1);
    }
  }
  for (int r = 0; r < MR; ++r) {
    _mm512_storeu_si512(c + r * cs, acc0[r]);
    _mm512_storeu_si512(c + r * cs + 16, acc1[r]);
  }
}

template <int MR>
LB_AVX512 void MicroFp8Avx(const uint32_t* x, int64_t xs, const uint8_t* w, int64_t groups, uint32_t* c, int64_t cs,
                           bool accumulate) {
  __m512 acc0[MR], acc1[MR];
  float* cf = reinterpret_cast<float*>(c);
  for (int r = 0; r < MR; ++r) {
    acc0[r] = accumulate ? _mm512_loadu_ps(cf + r * cs) : _mm512_setzero_ps();
    acc1[r] = accumulate ? _mm512_loadu_ps(cf + r * cs + 16) : _mm512_setzero_ps();
  }
  for (int64_t g = 0; g < groups; ++g) {
    const __m512bh w0 = (__m512bh)_mm512_load_si512(w + g * 128);
    const __m512bh w1 = (__m512bh)_mm512_load_si512(w + g * 128 + 64);
    for (int r = 0; r < MR; ++r) {
      const __m512bh b = (__m512bh)_mm512_set1_epi32(static_cast<int>(x[r * xs + g]));
      acc0[r] = _mm512_dpbf16_ps(acc0[r], b, w0);
      acc1[r] = _mm512_dpbf16_ps(acc1[r], b, w1);
    }
  }
  for (int r = 0; r < MR; ++r) {
    _mm512_storeu_ps(cf + r * cs, acc0[r]);
    _mm512_storeu_ps(cf + r * cs + 16, acc1[r]);
  }
}

template <int MR>
LB_AVX512 void MicroF32Avx(const uint32_t* x, int64_t xs, const uint8_t* w, int64_t groups, uint32_t* c, int64_t cs,
                           bool accumulate) {
  __m512 acc0[MR], acc1[MR];
  float* cf = reinterpret_cast<float*>(c);
  const float* xf = reinterpret_cast<const float*>(x);
  const float* wf = reinterpret_cast<const float*>(w);
  for (int r = 0; r < MR; ++r) {
    acc0[r] = accumulate ? _mm512_loadu_ps(cf + r * cs) : _mm512_setzero_ps();
    acc1[r] = accumulate ? _mm512_loadu_ps(cf + r * cs + 16) : _mm512_setzero_ps();
  }
  for (int64_t g = 0; g < groups; ++g) {
    const __m512 w0 = _mm512_load_ps(wf + g * 32);
    const __m512 w1 = _mm512_load_ps(wf + g * 32 + 16);
    for (int r = 0; r < MR; ++r) {
      const __m512 b = _mm512_set1_ps(xf[r * xs + g]);
      acc0[r] = _mm512_fmadd_ps(b, w0, acc0[r]);
      acc1[r] = _mm512_fmadd_ps(b, w1, acc1[r]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    _mm512_storeu_ps(cf + r * cs, acc0[r]);
    _mm512_storeu_ps(cf + r * cs + 16, acc1[r]);
  }
}

struct MicroSet {
  MicroFn fn[kMR + 1] = {};
  int mr = kMR;  // rows per register tile (fn[1..mr])
  int xw = 1;    // packed-activation words (uint32) per k-group
};

template <Kind K, template <int> class Wrap>
MicroSet MakeSet() {
  MicroSet s;
  s.fn[1] = Wrap<1>::fn;
  s.fn[2] = Wrap<2>::fn;
  s.fn[3] = Wrap<3>::fn;
  s.fn[4] = Wrap<4>::fn;
  s.fn[5] = Wrap<5>::fn;
  s.fn[6] = Wrap<6>::fn;
  s.fn[7] = Wrap<7>::fn;
  s.fn[8] = Wrap<8>::fn;
  return s;
}
template <int MR>
struct GI8 {
  static constexpr MicroFn fn = &MicroGeneric<Kind::kI8, MR>;
};
template <int MR>
struct GFp8 {
  static constexpr MicroFn fn = &MicroGeneric<Kind::kFp8, MR>;
};
template <int MR>
struct GW4 {
  static constexpr MicroFn fn = &MicroGeneric<Kind::kW4, MR>;
};
template <int MR>
struct AI8 {
  static constexpr MicroFn fn = &MicroI8Avx<MR>;
};
template <int MR>
struct AFp8 {
  static constexpr MicroFn fn = &MicroFp8Avx<MR>;
};
template <int MR>
struct AW4 {
  static constexpr MicroFn fn = &MicroF32Avx<MR>;
};

// ---------------------------------------------------------------------------------------------
// AVX2 (+FMA, F16C) micro-kernels, for CPUs without AVX-512 VNNI/BF16 (e.g. AMD Zen 1–3).
// Same 32-column panels as AVX-512 (W8A8: each k-block stored sub-panel by sub-panel,
// avx2_int8_tile.h; FP8: E4M3 codes, below); the tiles cover a panel in 8-column
// sub-panels (32 for a single row), so every loaded weight vector is reused by up to 6 rows.
// Packed activations take 2 words per k-group:
//   W8A8  (x+128) as four int16 per 4-int8 k-group; each 16-byte weight chunk (4 columns × 4 k)
//         is sign-extended to int16 and multiplied with vpmaddwd: pair sums ≤ 2·255·128 = 65280
//         in int32, so the int32 accumulation is exact (no vpmaddubsw, whose int16 pair sums
//         saturate); two partial sums per column are folded with vphaddd at the end (the 4-row
//         tile, which every M ≥ 4 runs on, is compiled apart: avx2_int8_tile.h);
//   FP8   two f32 per 2-k group; the weights stay E4M3 codes (64 bytes per k-group, half the
//         AVX-512 layout's bf16 pairs) and are widened to f32 through F16C (E4M3x16ToF32): in
//         registers for one row, a k-block at a time into the f32 tiles' layout for more, f32 FMA;
//   W4A16 one f32 per k (the dequantized k-block is f32 [k][32]), f32 FMA.

#define LB_AVX2 __attribute__((target("avx2,fma,f16c")))

inline int64_t Load64(const void* p) {
  int64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

template <int R, int C>
LB_AVX2 void MicroI8Avx2(const uint32_t* x, int64_t xs, const uint8_t* w, int64_t groups, uint32_t* c, int64_t cs,
                         bool accumulate) {
  constexpr int NV = C / 4;  // accumulators per row: 4 columns × 2 partial sums each
  for (int s = 0; s < kNR / C; ++s) {
    __m256i acc[R][NV];
    for (int r = 0; r < R; ++r)
      for (int i = 0; i < NV; ++i) acc[r][i] = _mm256_setzero_si256();
    // The C / 8 sub-panels of this pass, each a contiguous stream of 32 bytes per k-group
    // (avx2_int8_tile.h).
    const uint8_t* wp = w + s * (C / 8) * groups * 32;
    for (int64_t g = 0; g < groups; ++g) {
      const uint8_t* wg = wp + g * 32;
      if constexpr (C < kNR)
        _mm_prefetch(reinterpret_cast<const char*>(wg + cpu::kWeightPrefetchGroups * 32), _MM_HINT_T0);
      __m256i wv[NV];
      for (int i = 0; i < NV; ++i)
        wv[i] = _mm256_cvtepi8_epi16(
            _mm_load_si128(reinterpret_cast<const __m128i*>(wg + (i / 2) * groups * 32 + 16 * (i % 2))));
      for (int r = 0; r < R; ++r) {
        const __m256i b = _mm256_set1_epi64x(Load64(x + r * xs + 2 * g));
        for (int i = 0; i < NV; ++i) acc[r][i] = _mm256_add_epi32(acc[r][i], _mm256_madd_epi16(b, wv[i]));
      }
    }
    for (int r = 0; r < R; ++r)
      for (int i = 0; i < NV; i += 2) {
        // [c0a c0b c1a c1b | c2a c2b c3a c3b] + same for c4..c7 → [c0 c1 c4 c5 | c2 c3 c6 c7] → c0..c7
        __m256i h = _mm256_hadd_epi32(acc[r][i], acc[r][i + 1]);
        h = _mm256_permute4x64_epi64(h, _MM_SHUFFLE(3, 1, 2, 0));
        uint32_t* cp = c + r * cs + s * C + 4 * i;
        if (accumulate) h = _mm256_add_epi32(h, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(cp)));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(cp), h);
      }
  }
}

// 16 E4M3 codes → 16 f32, each 2^-8 times the code's value, exactly. A code's magnitude bits
// moved up 7 are an f16 whose exponent field is the code's exponent (bias 15 against E4M3's 7,
// hence the 2^-8) and whose mantissa starts with the code's 3 bits, subnormals included; F16C
// widens it. NaN codes (0x7F / 0xFF) become f16 NaN. The 2^8 is in the weight's scales
// (PrepareFp8), so the GEMM's f32 sums are those of the unscaled values times 2^-8 bit for bit.
LB_AVX2 inline void E4M3x16ToF32(const uint8_t* p, __m256* lo, __m256* hi) {
  const __m256i v = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  const __m256i mag = _mm256_and_si256(v, _mm256_set1_epi16(0x7F));
  __m256i h =
      _mm256_or_si256(_mm256_slli_epi16(mag, 7), _mm256_slli_epi16(_mm256_and_si256(v, _mm256_set1_epi16(0x80)), 8));
  h = _mm256_blendv_epi8(h, _mm256_set1_epi16(0x7E00), _mm256_cmpeq_epi16(mag, _mm256_set1_epi16(0x7F)));
  *lo = _mm256_cvtph_ps(_mm256_castsi256_si128(h));
  *hi = _mm256_cvtph_ps(_mm256_extracti128_si256(h, 1));
}

// FP8, one row (M = 1; more rows widen each k-block to f32 first: WidenE4M3PanelAvx2). A k-group
// of the AVX2 FP8 layout is 64 bytes: the 32 columns' even-k codes, then their odd-k codes. Each
// output accumulates k in order in one chain, continuing the previous k-blocks' sum, as the f32
// tiles do on the widened weights: a row's FP8 result has the same bits at every M (batched or
// alone). The chains' latency is hidden by the weight stream (this tile runs memory-bound).
LB_AVX2 void MicroFp8Avx2Row(const uint32_t* x, int64_t, const uint8_t* w, int64_t groups, uint32_t* c, int64_t,
                             bool accumulate) {
  const float* xf = reinterpret_cast<const float*>(x);
  float* cf = reinterpret_cast<float*>(c);
  __m256 a[4];
  for (int i = 0; i < 4; ++i) a[i] = accumulate ? _mm256_loadu_ps(cf + 8 * i) : _mm256_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    const uint8_t* wg = w + g * 64;
    const __m256 b0 = _mm256_broadcast_ss(xf + 2 * g), b1 = _mm256_broadcast_ss(xf + 2 * g + 1);
    __m256 e[4], o[4];
    E4M3x16ToF32(wg, &e[0], &e[1]);
    E4M3x16ToF32(wg + 16, &e[2], &e[3]);
    E4M3x16ToF32(wg + 32, &o[0], &o[1]);
    E4M3x16ToF32(wg + 48, &o[2], &o[3]);
    for (int i = 0; i < 4; ++i) a[i] = _mm256_fmadd_ps(b1, o[i], _mm256_fmadd_ps(b0, e[i], a[i]));
  }
  for (int i = 0; i < 4; ++i) _mm256_storeu_ps(cf + 8 * i, a[i]);
}

template <int R, int C>
LB_AVX2 void MicroF32Avx2(const uint32_t* x, int64_t xs, const uint8_t* w, int64_t groups, uint32_t* c, int64_t cs,
                          bool accumulate) {
  constexpr int NV = C / 8;
  const float* xf = reinterpret_cast<const float*>(x);
  const float* wf = reinterpret_cast<const float*>(w);
  float* cf = reinterpret_cast<float*>(c);
  for (int s = 0; s < kNR / C; ++s) {
    __m256 acc[R][NV];
    for (int r = 0; r < R; ++r)
      for (int i = 0; i < NV; ++i)
        acc[r][i] = accumulate ? _mm256_loadu_ps(cf + r * cs + s * C + 8 * i) : _mm256_setzero_ps();
    const float* wp = wf + s * C;
    for (int64_t g = 0; g < groups; ++g) {
      __m256 wv[NV];
      for (int i = 0; i < NV; ++i) wv[i] = _mm256_load_ps(wp + g * 32 + 8 * i);
      for (int r = 0; r < R; ++r) {
        const __m256 b = _mm256_broadcast_ss(xf + r * xs + g);
        for (int i = 0; i < NV; ++i) acc[r][i] = _mm256_fmadd_ps(b, wv[i], acc[r][i]);
      }
    }
    for (int r = 0; r < R; ++r)
      for (int i = 0; i < NV; ++i) _mm256_storeu_ps(cf + r * cs + s * C + 8 * i, acc[r][i]);
  }
}

// A row of activations as f32.
LB_AVX2 void RowToF32Avx2(DType dt, const void* x, int64_t k, float* out) {
  if (dt == DType::kF32) {
    std::memcpy(out, x, k * sizeof(float));
    return;
  }
  int64_t i = 0;
  const uint16_t* p = static_cast<const uint16_t*>(x);
  if (dt == DType::kBF16) {
    for (; i + 8 <= k; i += 8) {
      const __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i)));
      _mm256_storeu_ps(out + i, _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)));
    }
  } else {
    for (; i + 8 <= k; i += 8)
      _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i))));
  }
  for (; i < k; ++i) out[i] = ref::LoadFloat(dt, x, i);
}

// 8 int32 in [0, 255] (or [-128, 127] with sat = signed) → 8 bytes.
LB_AVX2 inline void Store8Bytes(__m256i v, bool is_signed, void* dst) {
  __m256i p = is_signed ? _mm256_packs_epi32(v, v) : _mm256_packus_epi32(v, v);
  p = is_signed ? _mm256_packs_epi16(p, p) : _mm256_packus_epi16(p, p);
  p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4));
  _mm_storel_epi64(static_cast<__m128i*>(dst), _mm256_castsi256_si128(p));
}

// +inf when the row holds a NaN or an infinity (the reference's RowAbsMax).
LB_AVX2 float RowAbsMaxAvx2(const float* xf, int64_t k) {
  const __m256 sign = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  __m256 mx = _mm256_setzero_ps(), nan = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= k; i += 8) {
    const __m256 v = _mm256_loadu_ps(xf + i);
    mx = _mm256_max_ps(_mm256_and_ps(v, sign), mx);              // an infinity stays; a NaN lane is skipped…
    nan = _mm256_or_ps(nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));  // …and noted here
  }
  if (_mm256_movemask_ps(nan) != 0) return std::numeric_limits<float>::infinity();
  alignas(32) float t[8];
  _mm256_store_ps(t, mx);
  float a = 0.0f;
  for (float v : t) a = std::max(a, v);
  for (; i < k; ++i) {
    if (!std::isfinite(xf[i])) return std::numeric_limits<float>::infinity();
    a = std::max(a, std::fabs(xf[i]));
  }
  return a;
}

LB_AVX2 void QuantRowInt8Avx2(const float* xf, int64_t k, int8_t* q, float* scale_out) {
  const float absmax = RowAbsMaxAvx2(xf, k);
  if (!std::isfinite(absmax)) return ref::NonFiniteRow(k, q, scale_out);
  const ref::Int8Row row = ref::Int8PerTokenRow(absmax);
  *scale_out = row.scale;
  const __m256 vm = _mm256_set1_ps(row.mult), lo = _mm256_set1_ps(-128.0f), hi = _mm256_set1_ps(127.0f);
  int64_t i = 0;
  for (; i + 8 <= k; i += 8) {
    __m256 v = _mm256_mul_ps(_mm256_loadu_ps(xf + i), vm);
    v = _mm256_min_ps(_mm256_max_ps(v, lo), hi);
    Store8Bytes(_mm256_cvtps_epi32(v), true, q + i);  // round to nearest even (MXCSR default)
  }
  for (; i < k; ++i) q[i] = static_cast<int8_t>(std::nearbyint(std::clamp(xf[i] * row.mult, -128.0f, 127.0f)));
}

// FastFp8 on 8 lanes (v already clamped to [-448, 448] or NaN); codes as int32.
LB_AVX2 inline __m256i Fp8Codes(__m256 v) {
  __m256i b = _mm256_castps_si256(v);
  const __m256i sign = _mm256_and_si256(_mm256_srli_epi32(b, 24), _mm256_set1_epi32(0x80));
  b = _mm256_and_si256(b, _mm256_set1_epi32(0x7FFFFFFF));
  const __m256i sub = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_castsi256_ps(b), _mm256_set1_ps(512.0f)));
  const __m256i bn = _mm256_add_epi32(
      b,
      _mm256_add_epi32(_mm256_set1_epi32(0x7FFFF), _mm256_and_si256(_mm256_srli_epi32(b, 20), _mm256_set1_epi32(1))));
  const __m256i e = _mm256_sub_epi32(_mm256_srli_epi32(bn, 23), _mm256_set1_epi32(120));
  __m256i code =
      _mm256_or_si256(_mm256_slli_epi32(e, 3), _mm256_and_si256(_mm256_srli_epi32(bn, 20), _mm256_set1_epi32(7)));
  code = _mm256_blendv_epi8(code, sub, _mm256_cmpgt_epi32(_mm256_set1_epi32(0x3C800000), b));
  code = _mm256_blendv_epi8(code, _mm256_set1_epi32(0x7F), _mm256_cmpgt_epi32(b, _mm256_set1_epi32(0x7F800000)));
  return _mm256_or_si256(code, sign);
}

// kMul: x · f (static per tensor, f = 1 / scale), else x / f (per token, f = the scale).
template <bool kMul>
LB_AVX2 void QuantRowFp8Avx2(const float* xf, int64_t k, float f, uint8_t* q) {
  const __m256 vf = _mm256_set1_ps(f), lo = _mm256_set1_ps(-kFp8E4M3Max), hi = _mm256_set1_ps(kFp8E4M3Max);
  int64_t i = 0;
  for (; i + 8 <= k; i += 8) {
    const __m256 x = _mm256_loadu_ps(xf + i);
    __m256 v = kMul ? _mm256_mul_ps(x, vf) : _mm256_div_ps(x, vf);
    v = _mm256_min_ps(hi, _mm256_max_ps(lo, v));  // NaN stays NaN (max/min return the 2nd operand)
    Store8Bytes(Fp8Codes(v), false, q + i);
  }
  for (; i < k; ++i) q[i] = FastFp8(std::clamp(kMul ? xf[i] * f : xf[i] / f, -kFp8E4M3Max, kFp8E4M3Max));
}

// E4M3 codes → f32 (exact), 8 lanes.
LB_AVX2 inline __m256 Fp8ToF32x8(const uint8_t* p) {
  const __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  const __m256i sign = _mm256_slli_epi32(_mm256_and_si256(v, _mm256_set1_epi32(0x80)), 24);
  const __m256i a = _mm256_and_si256(v, _mm256_set1_epi32(0x7F));
  const __m256i norm = _mm256_add_epi32(_mm256_slli_epi32(a, 20), _mm256_set1_epi32(120 << 23));
  const __m256i sub = _mm256_castps_si256(_mm256_mul_ps(_mm256_cvtepi32_ps(a), _mm256_set1_ps(1.0f / 512.0f)));
  __m256i r = _mm256_blendv_epi8(norm, sub, _mm256_cmpgt_epi32(_mm256_set1_epi32(8), a));
  r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7FC00000), _mm256_cmpeq_epi32(a, _mm256_set1_epi32(0x7F)));
  return _mm256_castsi256_ps(_mm256_or_si256(r, sign));
}

// Activation k-block packing for the AVX2 micro-kernels (see above). dst: gb k-groups.
LB_AVX2 void PackRowI8Avx2(const uint8_t* xr, int64_t k, int64_t g0, int64_t gb, uint16_t* dst) {
  const int64_t c0 = g0 * 4, c1 = std::min(k, (g0 + gb) * 4), cend = (g0 + gb) * 4;
  const __m128i flip = _mm_set1_epi8(static_cast<char>(0x80));
  int64_t c = c0;
  for (; c + 16 <= c1; c += 16) {
    const __m128i v = _mm_xor_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(xr + c)), flip);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + (c - c0)), _mm256_cvtepu8_epi16(v));
  }
  for (; c < c1; ++c) dst[c - c0] = static_cast<uint16_t>(xr[c] ^ 0x80u);
  for (; c < cend; ++c) dst[c - c0] = 0x80u;
}

LB_AVX2 void PackRowFp8Avx2(const uint8_t* xr, int64_t k, int64_t g0, int64_t gb, float* dst) {
  const int64_t c0 = g0 * 2, c1 = std::min(k, (g0 + gb) * 2), cend = (g0 + gb) * 2;
  int64_t c = c0;
  for (; c + 8 <= c1; c += 8) _mm256_storeu_ps(dst + (c - c0), Fp8ToF32x8(xr + c));
  for (; c < c1; ++c) dst[c - c0] = Fp8E4M3ToFloat(xr[c]);
  for (; c < cend; ++c) dst[c - c0] = 0.0f;
}

template <bool kBf16>
LB_AVX2 void DequantW4Avx2(const uint8_t* packed, const float* sc, const float* zf, int64_t groups, int64_t gs,
                           int64_t k0, int64_t kb, float* out) {
  const __m256i m15 = _mm256_set1_epi32(15);
  for (int64_t kk = 0; kk < kb; kk += 2) {
    const int64_t c = k0 + kk;  // k0 is even (a multiple of kGB)
    const uint8_t* b = packed + (c / 2) * kNR;
    const int64_t ga = std::min(c / gs, groups - 1), gb = std::min((c + 1) / gs, groups - 1);
    for (int h = 0; h < 4; ++h) {
      const __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(b + 8 * h)));
      for (int t = 0; t < 2; ++t) {
        if (kk + t >= kb) break;
        const int64_t g = t ? gb : ga;
        const __m256i code = _mm256_and_si256(t ? _mm256_srli_epi32(v, 4) : v, m15);
        __m256 f = _mm256_sub_ps(_mm256_cvtepi32_ps(code), _mm256_loadu_ps(zf + g * kNR + 8 * h));
        f = _mm256_mul_ps(f, _mm256_loadu_ps(sc + g * kNR + 8 * h));
        if constexpr (kBf16) {
          __m256i bits = _mm256_castps_si256(f);
          const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
          bits = _mm256_add_epi32(bits, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF)));
          f = _mm256_castsi256_ps(_mm256_and_si256(bits, _mm256_set1_epi32(static_cast<int>(0xFFFF0000u))));
        } else {
          f = _mm256_cvtph_ps(_mm256_cvtps_ph(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        }
        _mm256_store_ps(out + (kk + t) * kNR + 8 * h, f);
      }
    }
  }
}

// FP8 with several rows: a panel's k-block of E4M3 codes [gb][even / odd k][32 cols] widened to
// f32 [2·gb][32] (times 2^-8, E4M3x16ToF32) once, so the f32 6 × 16 tile runs on it.
LB_AVX2 void WidenE4M3PanelAvx2(const uint8_t* src, int64_t gb, float* out) {
  for (int64_t g = 0; g < gb; ++g)
    for (int t = 0; t < 2; ++t)  // even, odd k
      for (int h = 0; h < 2; ++h) {
        __m256 lo, hi;
        E4M3x16ToF32(src + g * 64 + 32 * t + 16 * h, &lo, &hi);
        _mm256_store_ps(out + (2 * g + t) * kNR + 16 * h, lo);
        _mm256_store_ps(out + (2 * g + t) * kNR + 16 * h + 8, hi);
      }
}

// Stores 8 f32 outputs in dtype dt, rounding like ref::StoreFloat; false (nothing stored) when
// a lane is NaN (the caller's scalar path then keeps the reference's NaN encoding).
LB_AVX2 inline bool StoreOut8(DType dt, void* y, int64_t i, __m256 v) {
  if (dt == DType::kF32) {
    _mm256_storeu_ps(static_cast<float*>(y) + i, v);
    return true;
  }
  if (_mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)) != 0) return false;
  __m128i h;
  if (dt == DType::kBF16) {
    __m256i bits = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
    bits = _mm256_srli_epi32(_mm256_add_epi32(bits, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF))), 16);
    bits = _mm256_packus_epi32(bits, bits);
    h = _mm256_castsi256_si128(_mm256_permute4x64_epi64(bits, _MM_SHUFFLE(2, 0, 2, 0)));
  } else {
    h = _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  _mm_storeu_si128(reinterpret_cast<__m128i*>(static_cast<uint16_t*>(y) + i), h);
  return true;
}

// The GEMM epilogue for one row segment, 8 columns at a time, with the f32 operations of the
// scalar epilogue in the same order (no FMA): bit-identical. Returns the columns done (a
// multiple of 8; it stops early at a NaN output, which the scalar loop then stores).
LB_AVX2 int64_t EpilogueRowAvx2(Kind kind, const uint32_t* c, const int32_t* colsum, const float* ws, bool wpc,
                                float as, const float* bias, DType dt, void* y, int64_t yoff, int64_t nc) {
  const __m256 vas = _mm256_set1_ps(as);
  const __m256 ws0 = ws ? _mm256_set1_ps(ws[0]) : _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 8 <= nc; j += 8) {
    __m256 v;
    if (kind == Kind::kI8) {
      const __m256i acc =
          _mm256_sub_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(c + j)),
                           _mm256_slli_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(colsum + j)), 7));
      v = _mm256_mul_ps(_mm256_cvtepi32_ps(acc), wpc ? _mm256_loadu_ps(ws + j) : ws0);
      v = _mm256_mul_ps(v, vas);
    } else if (kind == Kind::kFp8) {
      v = _mm256_mul_ps(_mm256_loadu_ps(reinterpret_cast<const float*>(c + j)), wpc ? _mm256_loadu_ps(ws + j) : ws0);
      v = _mm256_mul_ps(v, vas);
    } else {
      v = _mm256_loadu_ps(reinterpret_cast<const float*>(c + j));
    }
    if (bias) v = _mm256_add_ps(v, _mm256_loadu_ps(bias + j));
    if (!StoreOut8(dt, y, yoff + j, v)) break;
  }
  return j;
}

MicroSet Avx2Set(Kind kind) {
  MicroSet s;
  s.mr = 6;
  if (kind == Kind::kI8) {
    // 4 rows × 8 columns: 8 accumulators + 2 weight vectors + 4 broadcasts fit the 16 ymm
    // registers (6 × 8 spills accumulators to the stack and runs ~40% slower).
    s.mr = 4;
    s.xw = 2;
    s.fn[1] = &MicroI8Avx2<1, 32>;
    s.fn[2] = &MicroI8Avx2<2, 16>;
    s.fn[3] = &MicroI8Avx2<3, 8>;
    s.fn[4] = &cpu::MicroI8Avx2Rows4;  // MicroI8Avx2<4, 8>, compiled apart (avx2_int8_tile.h)
  } else if (kind == Kind::kFp8) {
    // One row only: a task of more rows widens each k-block and runs the f32 tiles (RunGemm).
    s.mr = 1;
    s.xw = 2;
    s.fn[1] = &MicroFp8Avx2Row;
  } else {
    s.xw = 1;
    s.fn[1] = &MicroF32Avx2<1, 32>;
    s.fn[2] = &MicroF32Avx2<2, 16>;
    s.fn[3] = &MicroF32Avx2<3, 16>;
    s.fn[4] = &MicroF32Avx2<4, 16>;
    s.fn[5] = &MicroF32Avx2<5, 16>;
    s.fn[6] = &MicroF32Avx2<6, 16>;
  }
  return s;
}

bool CpuHasAvx2KernelsImpl() {
  __builtin_cpu_init();
  // F16C from CPUID leaf 1 (ECX bit 29): clang's __builtin_cpu_supports does not know "f16c".
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & (1u << 29)) != 0;
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c;
}

// ---------------------------------------------------------------------------------------------
// Prepared weights.

class CpuWeight : public PreparedWeight {
 public:
  CpuWeight(std::string backend, WeightKind kind, int64_t n, int64_t k)
      : PreparedWeight(std::move(backend), kind, n, k) {}
  void SetMeta(int64_t gs, bool per_channel, bool asym, bool act_order) {
    group_size_ = gs;
    per_channel_ = per_channel;
    asym_ = asym;
    act_order_ = act_order;
  }
  int64_t panels = 0;           // ceil(N / 32)
  int64_t kgroups = 0;          // k-groups (I8: ceil(K/4), FP8: ceil(K/2), W4: K)
  int64_t group_bytes = 128;    // I8/FP8: bytes per k-group of a panel (AVX2 FP8: 64)
  // I8/FP8: [panels][kgroups][group_bytes] (AVX2 I8: Avx2I8Offset); W4: [panels][ceil(K/2)][32 B]
  AVec<uint8_t> packed;
  std::vector<float> wscale;    // I8/FP8: [1] or [N]
  std::vector<int32_t> colsum;  // I8: Σ_k W[n,k]
  int64_t groups = 0;           // W4
  AVec<float> w4_scale, w4_zf;  // W4: [panels][groups][32]; zf = zero + 8
  std::vector<int32_t> perm;    // W4 act order
  // cpu-ref: the checkpoint-form tensors (scales as f32).
  std::vector<int8_t> ref_i8;
  std::vector<uint8_t> ref_u8;
  std::vector<int32_t> ref_packed, ref_zp, ref_gidx;
  std::vector<float> ref_scale;

  int64_t bytes() const override {
    return Bytes(packed) + Bytes(wscale) + Bytes(colsum) + Bytes(w4_scale) + Bytes(w4_zf) + Bytes(perm) +
           Bytes(ref_i8) + Bytes(ref_u8) + Bytes(ref_packed) + Bytes(ref_zp) + Bytes(ref_gidx) + Bytes(ref_scale);
  }

 private:
  template <class V>
  static int64_t Bytes(const V& v) {
    return static_cast<int64_t>(v.capacity() * sizeof(typename V::value_type));
  }
};

// ---------------------------------------------------------------------------------------------

class CpuBackend : public Backend {
 public:
  CpuBackend(std::string name, int threads, bool reference, Isa isa)
      : name_(std::move(name)),
        reference_(reference),
        avx_(isa == Isa::kAvx512),
        avx2_(isa == Isa::kAvx2),
        pool_(threads) {
    scratch_.resize(pool_.threads());
    if (avx2_) {
      i8_ = Avx2Set(Kind::kI8);
      fp8_ = Avx2Set(Kind::kFp8);
      w4_ = Avx2Set(Kind::kW4);
    } else if (avx_) {
      i8_ = MakeSet<Kind::kI8, AI8>();
      fp8_ = MakeSet<Kind::kFp8, AFp8>();
      w4_ = MakeSet<Kind::kW4, AW4>();
    } else {
      i8_ = MakeSet<Kind::kI8, GI8>();
      fp8_ = MakeSet<Kind::kFp8, GFp8>();
      w4_ = MakeSet<Kind::kW4, GW4>();
    }
  }

  std::string name() const override { return name_; }
  std::string Requirements() const override {
    return name_ +
           ": any M ≥ 1, K ≥ 1, N ≥ 1 for every op; W8A8 K ≤ 65536 (int32 accumulation of u8·s8 "
           "products); W4A16 any group size, and an act-order g_idx must give every group exactly "
           "group_size columns.";
  }

  Status Alloc(size_t bytes, void** ptr) override {
    if (bytes > SIZE_MAX - 63) return InvalidArgument("cpu: cannot allocate " + std::to_string(bytes) + " bytes");
    *ptr = std::aligned_alloc(64, std::max<size_t>(64, (bytes + 63) / 64 * 64));
    return *ptr ? Status::Ok() : Internal("cpu: out of memory allocating " + std::to_string(bytes) + " bytes");
  }
  void Free(void* ptr) override { std::free(ptr); }
  Status CopyIn(void* dst, const void* src, size_t bytes) override {
    std::memcpy(dst, src, bytes);
    return Status::Ok();
  }
  Status CopyOut(void* dst, const void* src, size_t bytes) override {
    std::memcpy(dst, src, bytes);
    return Status::Ok();
  }
  Status Synchronize() override { return Status::Ok(); }

  Status QuantizeInt8PerToken(DType dt, const void* x, int64_t m, int64_t k, int8_t* q, float* scale) override;
  Status QuantizeFp8PerTensor(DType dt, const void* x, int64_t m, int64_t k, float scale, uint8_t* q) override;
  Status QuantizeFp8PerToken(DType dt, const void* x, int64_t m, int64_t k, uint8_t* q, float* scale) override;
  Status PrepareInt8(const Int8WeightSource& src, std::unique_ptr<PreparedWeight>* out) override;
  Status PrepareFp8(const Fp8WeightSource& src, std::unique_ptr<PreparedWeight>* out) override;
  Status PrepareInt4(const Int4WeightSource& src, std::unique_ptr<PreparedWeight>* out) override;
  Status GemmW8A8(const GemmArgs& a) override;
  Status GemmFp8(const GemmArgs& a) override;
  Status GemmW4A16(const GemmArgs& a) override;

 private:
  struct Scratch {
    AVec<uint32_t> x;  // [kMB][kGB]
    AVec<uint32_t> c;  // [kMB][kPanelsPerTask * 32]
    AVec<float> w;     // [kGB][32]
    std::vector<float> row;
  };
  void RunGemm(Kind kind, const GemmArgs& a, const CpuWeight& w);
  void PackX(Kind kind, const GemmArgs& a, const CpuWeight& w, int64_t r0, int64_t mb, int64_t g0, int64_t gb,
             Scratch& s);
  void DequantW4(const CpuWeight& w, DType act, int64_t p, int64_t k0, int64_t kb, float* out);
  void Epilogue(Kind kind, const GemmArgs& a, const CpuWeight& w, int64_t r0, int64_t mb, int64_t c0, int64_t nc,
                const uint32_t* c, int64_t cs);

  std::string name_;
  bool reference_, avx_, avx2_;
  ThreadPool pool_;
  std::vector<Scratch> scratch_;
  MicroSet i8_, fp8_, w4_;
};

// ---- quantization ---------------------------------------------------------------------------

LB_AVX512 void QuantRowInt8Avx(const float* xf, int64_t k, int8_t* q, float* scale_out) {
  __m512 mx = _mm512_setzero_ps();
  __mmask16 nan = 0;
  int64_t i = 0;
  for (; i + 16 <= k; i += 16) {
    const __m512 v = _mm512_loadu_ps(xf + i);
    mx = _mm512_max_ps(mx, _mm512_abs_ps(v));
    nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  }
  float absmax = nan ? std::numeric_limits<float>::infinity() : _mm512_reduce_max_ps(mx);
  for (; i < k; ++i) {
    absmax = std::isfinite(xf[i]) ? std::max(absmax, std::fabs(xf[i])) : std::numeric_limits<float>::infinity();
  }
  if (!std::isfinite(absmax)) return ref::NonFiniteRow(k, q, scale_out);
  const ref::Int8Row row = ref::Int8PerTokenRow(absmax);
  *scale_out = row.scale;
  const __m512 vm = _mm512_set1_ps(row.mult), lo = _mm512_set1_ps(-128.0f), hi = _mm512_set1_ps(127.0f);
  for (i = 0; i + 16 <= k; i += 16) {
    __m512 v = _mm512_mul_ps(_mm512_loadu_ps(xf + i), vm);
    v = _mm512_min_ps(_mm512_max_ps(v, lo), hi);
    __m512i iv = _mm512_cvt_roundps_epi32(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + i), _mm512_cvtsepi32_epi8(iv));
  }
  for (; i < k; ++i) q[i] = static_cast<int8_t>(std::nearbyint(std::clamp(xf[i] * row.mult, -128.0f, 127.0f)));
}

// +inf when the row holds a NaN or an infinity (the reference's RowAbsMax).
float RowAbsMax(const float* xf, int64_t k) {
  float a = 0.0f;
  for (int64_t i = 0; i < k; ++i) {
    if (!std::isfinite(xf[i])) return std::numeric_limits<float>::infinity();
    a = std::max(a, std::fabs(xf[i]));
  }
  return a;
}

void QuantRowInt8Generic(const float* xf, int64_t k, int8_t* q, float* scale_out) {
  const float absmax = RowAbsMax(xf, k);
  if (!std::isfinite(absmax)) return ref::NonFiniteRow(k, q, scale_out);
  const ref::Int8Row row = ref::Int8PerTokenRow(absmax);
  *scale_out = row.scale;
  for (int64_t i = 0; i < k; ++i)
    q[i] = static_cast<int8_t>(std::nearbyint(std::clamp(xf[i] * row.mult, -128.0f, 127.0f)));
}

// As QuantRowFp8Avx2: kMul multiplies by f = 1 / scale, else divides by f = the scale.
template <bool kMul>
void QuantRowFp8(const float* xf, int64_t k, float f, uint8_t* q) {
  for (int64_t i = 0; i < k; ++i) q[i] = FastFp8(std::clamp(kMul ? xf[i] * f : xf[i] / f, -kFp8E4M3Max, kFp8E4M3Max));
}

Status CpuBackend::QuantizeInt8PerToken(DType dt, const void* x, int64_t m, int64_t k, int8_t* q, float* scale) {
  LOWBIT_KRETURN_IF_ERROR(ValidateQuantize("QuantizeInt8PerToken", dt, x, m, k, q, scale, true));
  if (reference_) {
    ref::QuantizeInt8PerToken(dt, x, m, k, q, scale);
    return Status::Ok();
  }
  const size_t es = DTypeSize(dt);
  pool_.ParallelFor(m, [&](int worker, int64_t r) {
    auto& row = scratch_[worker].row;
    row.resize(k);
    const void* xr = static_cast<const uint8_t*>(x) + r * k * es;
    if (avx_) {
      RowToF32Avx(dt, xr, k, row.data());
      QuantRowInt8Avx(row.data(), k, q + r * k, scale + r);
    } else if (avx2_) {
      RowToF32Avx2(dt, xr, k, row.data());
      QuantRowInt8Avx2(row.data(), k, q + r * k, scale + r);
    } else {
      RowToF32Generic(dt, xr, k, row.data());
      QuantRowInt8Generic(row.data(), k, q + r * k, scale + r);
    }
  });
  return Status::Ok();
}

Status CpuBackend::QuantizeFp8PerTensor(DType dt, const void* x, int64_t m, int64_t k, float scale, uint8_t* q) {
  LOWBIT_KRETURN_IF_ERROR(ValidateQuantize("QuantizeFp8PerTensor", dt, x, m, k, q, nullptr, false));
  LOWBIT_KRETURN_IF_ERROR(ValidateStaticScale("QuantizeFp8PerTensor", scale));
  if (reference_) {
    ref::QuantizeFp8PerTensor(dt, x, m, k, scale, q);
    return Status::Ok();
  }
  const size_t es = DTypeSize(dt);
  const float inv = 1.0f / scale;
  pool_.ParallelFor(m, [&](int worker, int64_t r) {
    auto& row = scratch_[worker].row;
    row.resize(k);
    const void* xr = static_cast<const uint8_t*>(x) + r * k * es;
    if (avx2_) {
      RowToF32Avx2(dt, xr, k, row.data());
      QuantRowFp8Avx2<true>(row.data(), k, inv, q + r * k);
      return;
    }
    avx_ ? RowToF32Avx(dt, xr, k, row.data()) : RowToF32Generic(dt, xr, k, row.data());
    QuantRowFp8<true>(row.data(), k, inv, q + r * k);
  });
  return Status::Ok();
}

Status CpuBackend::QuantizeFp8PerToken(DType dt, const void* x, int64_t m, int64_t k, uint8_t* q, float* scale) {
  LOWBIT_KRETURN_IF_ERROR(ValidateQuantize("QuantizeFp8PerToken", dt, x, m, k, q, scale, true));
  if (reference_) {
    ref::QuantizeFp8PerToken(dt, x, m, k, q, scale);
    return Status::Ok();
  }
  const size_t es = DTypeSize(dt);
  pool_.ParallelFor(m, [&](int worker, int64_t r) {
    auto& row = scratch_[worker].row;
    row.resize(k);
    const void* xr = static_cast<const uint8_t*>(x) + r * k * es;
    if (avx2_) {
      RowToF32Avx2(dt, xr, k, row.data());
      const float absmax = RowAbsMaxAvx2(row.data(), k);
      if (!std::isfinite(absmax)) return ref::NonFiniteRow(k, q + r * k, scale + r);
      const float s = ref::Fp8PerTokenScale(absmax);
      scale[r] = s;
      QuantRowFp8Avx2<false>(row.data(), k, s, q + r * k);
      return;
    }
    avx_ ? RowToF32Avx(dt, xr, k, row.data()) : RowToF32Generic(dt, xr, k, row.data());
    const float absmax = RowAbsMax(row.data(), k);
    if (!std::isfinite(absmax)) return ref::NonFiniteRow(k, q + r * k, scale + r);
    const float s = ref::Fp8PerTokenScale(absmax);
    scale[r] = s;
    QuantRowFp8<false>(row.data(), k, s, q + r * k);
  });
  return Status::Ok();
}

// ---- weight preparation ---------------------------------------------------------------------

// Where column j of a panel's k-group g lies in the AVX2 W8A8 layout (avx2_int8_tile.h): in its
// k-block of kGB groups (the last one shorter), sub-panel j / 8 after the ones before it, then
// group g's 32 bytes, then column j's 4.
int64_t Avx2I8Offset(int64_t g, int64_t j, int64_t kgroups) {
  const int64_t b0 = g - g % kGB, gb = std::min(kGB, kgroups - b0);
  return b0 * 128 + (j / 8) * gb * 32 + (g - b0) * 32 + 4 * (j % 8);
}

// The weight layouts are checkpoint rows transposed per panel of kNR rows: unit u of row r goes
// to slot r % kNR of unit u of panel r / kNR (base + (r / kNR) · panel_bytes, unit_bytes per
// unit). For each row, copy(r, r % kNR, u0, u1, panel) copies units [u0, u1); its last call has
// u1 == units (units may be 0). Panels run in parallel, units in blocks of ≈ 16 KB of a panel,
// so a block's stores stay in L1 while its rows are read.
template <class Copy>
void TransposePanels(ThreadPool& pool, int64_t n, int64_t units, int64_t unit_bytes, uint8_t* base, int64_t panel_bytes,
                     const Copy& copy) {
  const int64_t block = std::max<int64_t>(1, 16384 / unit_bytes);
  pool.ParallelFor((n + kNR - 1) / kNR, [&](int, int64_t p) {
    uint8_t* panel = base + p * panel_bytes;
    for (int64_t u0 = 0;; u0 += block) {
      const int64_t u1 = std::min(units, u0 + block);
      for (int64_t j = 0; j < kNR && p * kNR + j < n; ++j) copy(p * kNR + j, j, u0, u1, panel);
      if (u1 == units) break;
    }
  });
}

Status CpuBackend::PrepareInt8(const Int8WeightSource& src, std::unique_ptr<PreparedWeight>* out) {
  LOWBIT_KRETURN_IF_ERROR(ValidatePrepareOut(name_, out));
  LOWBIT_KRETURN_IF_ERROR(ValidateInt8Source(src));
  if (src.k > kMaxKInt8)
    return InvalidArgument(name_ + ": W8A8 K = " + std::to_string(src.k) + " exceeds " + std::to_string(kMaxKInt8) +
                           " (int32 accumulation of u8·s8 products could overflow)");
  auto w = std::make_unique<CpuWeight>(name_, WeightKind::kInt8, src.n, src.k);
  w->SetMeta(0, src.scale.count != 1, false, false);
  w->wscale = ScalesToFloat(src.scale);
  const int64_t n = src.n, k = src.k;
  if (reference_) {
    w->ref_i8.assign(src.weight, src.weight + n * k);
  } else {
    w->panels = (n + kNR - 1) / kNR;
    w->kgroups = (k + 3) / 4;
    w->packed.assign(w->panels * w->kgroups * 128, 0);
    w->colsum.assign(n, 0);
    // Row r's k-group g (4 int8) goes to bytes [4j, 4j+4) of its panel's 128-byte group g (AVX2:
    // Avx2I8Offset): one 4-byte copy per group; the last group's missing k stay zero.
    const int64_t full = k / 4, kgroups = w->kgroups;
    const bool avx2 = avx2_;
    auto at = [kgroups, avx2](int64_t g, int64_t j) { return avx2 ? Avx2I8Offset(g, j, kgroups) : g * 128 + 4 * j; };
    TransposePanels(pool_, n, full, 128, w->packed.data(), w->kgroups * 128,
                    [&](int64_t r, int64_t j, int64_t g0, int64_t g1, uint8_t* panel) {
                      const int8_t* row = src.weight + r * k;
                      for (int64_t g = g0; g < g1; ++g) std::memcpy(panel + at(g, j), row + 4 * g, 4);
                      if (g1 == full) {
                        if (k > 4 * full) std::memcpy(panel + at(full, j), row + 4 * full, k - 4 * full);
                        int32_t sum = 0;
                        for (int64_t c = 0; c < k; ++c) sum += row[c];
                        w->colsum[r] = sum;
                      }
                    });
  }
  *out = std::move(w);
  return Status::Ok();
}

Status CpuBackend::PrepareFp8(const Fp8WeightSource& src, std::unique_ptr<PreparedWeight>* out) {
  LOWBIT_KRETURN_IF_ERROR(ValidatePrepareOut(name_, out));
  LOWBIT_KRETURN_IF_ERROR(ValidateFp8Source(src));
  auto w = std::make_unique<CpuWeight>(name_, WeightKind::kFp8, src.n, src.k);
  w->SetMeta(0, src.scale.count != 1, false, false);
  w->wscale = ScalesToFloat(src.scale);
  const int64_t n = src.n, k = src.k;
  if (reference_) {
    w->ref_u8.assign(src.weight, src.weight + n * k);
  } else {
    w->panels = (n + kNR - 1) / kNR;
    w->kgroups = (k + 1) / 2;
    const int64_t full = k / 2;
    w->group_bytes = avx2_ ? 64 : 128;
    w->packed.assign(w->panels * w->kgroups * w->group_bytes, 0);
    if (avx2_) {
      // Row r's k-group g goes to bytes j (even k) and 32 + j (odd k) of its panel's 64-byte group
      // g, as E4M3 codes; the kernels widen them as 2^-8 times their values (E4M3x16ToF32), which
      // the scales make up for.
      for (float& v : w->wscale) v *= 256.0f;
      TransposePanels(pool_, n, full, 64, w->packed.data(), w->kgroups * 64,
                      [&](int64_t r, int64_t j, int64_t g0, int64_t g1, uint8_t* panel) {
                        const uint8_t* row = src.weight + r * k;
                        for (int64_t g = g0; g < g1; ++g) {
                          panel[g * 64 + j] = row[2 * g];
                          panel[g * 64 + 32 + j] = row[2 * g + 1];
                        }
                        if (g1 == full && k % 2 != 0) panel[full * 64 + j] = row[k - 1];
                      });
    } else {
      const auto& lut = Fp8Lut();
      // Row r's k-group g (2 codes, as bf16) goes to bytes [4j, 4j+4) of its panel's group g.
      TransposePanels(pool_, n, full, 128, w->packed.data(), w->kgroups * 128,
                      [&](int64_t r, int64_t j, int64_t g0, int64_t g1, uint8_t* panel) {
                        const uint8_t* row = src.weight + r * k;
                        for (int64_t g = g0; g < g1; ++g) {
                          const uint16_t pair[2] = {lut.bf16[row[2 * g]], lut.bf16[row[2 * g + 1]]};
                          std::memcpy(panel + g * 128 + 4 * j, pair, 4);
                        }
                        if (g1 == full && k % 2 != 0) std::memcpy(panel + full * 128 + 4 * j, &lut.bf16[row[k - 1]], 2);
                      });
    }
  }
  *out = std::move(w);
  return Status::Ok();
}

Status CpuBackend::PrepareInt4(const Int4WeightSource& src, std::unique_ptr<PreparedWeight>* out) {
  LOWBIT_KRETURN_IF_ERROR(ValidatePrepareOut(name_, out));
  LOWBIT_KRETURN_IF_ERROR(ValidateInt4Source(src));
  auto w = std::make_unique<CpuWeight>(name_, WeightKind::kInt4, src.n, src.k);
  const int64_t n = src.n, k = src.k;
  const int64_t gs = Int4GroupSize(k, src.group_size), groups = Int4Groups(k, src.group_size);
  w->SetMeta(gs, true, src.zero_point_packed != nullptr, src.g_idx != nullptr);
  w->groups = groups;
  if (reference_) {
    std::vector<int32_t> perm;  // the same g_idx rule as the fast paths (Requirements())
    LOWBIT_KRETURN_IF_ERROR(Int4ActOrderPermutation(src, &perm));
    const int64_t words = (k + 7) / 8;
    w->ref_packed.assign(src.weight_packed, src.weight_packed + n * words);
    if (src.zero_point_packed) w->ref_zp.assign(src.zero_point_packed, src.zero_point_packed + ((n + 7) / 8) * groups);
    if (src.g_idx) w->ref_gidx.assign(src.g_idx, src.g_idx + k);
    w->ref_scale = ScalesToFloat(src.scale);
    *out = std::move(w);
    return Status::Ok();
  }
  DecodedInt4 d;
  LOWBIT_KRETURN_IF_ERROR(DecodeInt4(src, &d));
  w->perm = d.perm;
  w->panels = (n + kNR - 1) / kNR;
  w->kgroups = k;
  const int64_t kh = (k + 1) / 2;
  w->packed.assign(w->panels * kh * kNR, 0x88);
  w->w4_scale.assign(w->panels * groups * kNR, 0.0f);
  w->w4_zf.assign(w->panels * groups * kNR, 8.0f);
  // Byte b of decoded row r (columns 2b, 2b + 1) goes to byte [b][r % 32] of its panel.
  TransposePanels(pool_, n, kh, kNR, w->packed.data(), kh * kNR,
                  [&](int64_t r, int64_t j, int64_t b0, int64_t b1, uint8_t* panel) {
                    const uint8_t* row = d.nibbles.data() + r * kh;
                    for (int64_t b = b0; b < b1; ++b) panel[b * kNR + j] = row[b];
                  });
  for (int64_t r = 0; r < n; ++r) {
    const int64_t p = r / kNR, j = r % kNR;
    for (int64_t g = 0; g < groups; ++g) {
      w->w4_scale[(p * groups + g) * kNR + j] = d.scale[r * groups + g];
      w->w4_zf[(p * groups + g) * kNR + j] = static_cast<float>(d.zero[r * groups + g] + 8);
    }
  }
  *out = std::move(w);
  return Status::Ok();
}

// ---- GEMM driver ----------------------------------------------------------------------------

void CpuBackend::PackX(Kind kind, const GemmArgs& a, const CpuWeight& w, int64_t r0, int64_t mb, int64_t g0, int64_t gb,
                       Scratch& s) {
  const int64_t k = w.k();
  if (avx2_ && kind != Kind::kW4) {
    const int64_t xs = 2 * kGB;
    for (int64_t r = 0; r < mb; ++r) {
      const uint8_t* xr = static_cast<const uint8_t*>(a.x) + (r0 + r) * k;
      if (kind == Kind::kI8)
        PackRowI8Avx2(xr, k, g0, gb, reinterpret_cast<uint16_t*>(s.x.data() + r * xs));
      else
        PackRowFp8Avx2(xr, k, g0, gb, reinterpret_cast<float*>(s.x.data() + r * xs));
    }
    return;
  }
  for (int64_t r = 0; r < mb; ++r) {
    uint32_t* dst = s.x.data() + r * kGB;
    if (kind == Kind::kI8) {
      const uint8_t* xr = static_cast<const uint8_t*>(a.x) + (r0 + r) * k;
      const int64_t c0 = g0 * 4, c1 = std::min(k, (g0 + gb) * 4);
      uint8_t* d8 = reinterpret_cast<uint8_t*>(dst);
      for (int64_t c = c0; c < c1; ++c) d8[c - c0] = xr[c] ^ 0x80u;
      for (int64_t c = c1; c < (g0 + gb) * 4; ++c) d8[c - c0] = 0x80u;
    } else if (kind == Kind::kFp8) {
      const uint8_t* xr = static_cast<const uint8_t*>(a.x) + (r0 + r) * k;
      const auto& lut = Fp8Lut();
      const int64_t c0 = g0 * 2, c1 = std::min(k, (g0 + gb) * 2);
      uint16_t* d16 = reinterpret_cast<uint16_t*>(dst);
      for (int64_t c = c0; c < c1; ++c) d16[c - c0] = lut.bf16[xr[c]];
      for (int64_t c = c1; c < (g0 + gb) * 2; ++c) d16[c - c0] = 0;
    } else {
      const uint16_t* xr = static_cast<const uint16_t*>(a.x) + (r0 + r) * k;
      float* df = reinterpret_cast<float*>(dst);
      const bool bf = a.x_dtype == DType::kBF16;
      const int64_t c1 = std::min(k, g0 + gb);
      if (w.perm.empty()) {
        if (avx_) {
          RowToF32Avx(a.x_dtype, xr + g0, c1 - g0, df);
        } else if (avx2_) {
          RowToF32Avx2(a.x_dtype, xr + g0, c1 - g0, df);
        } else {
          for (int64_t c = g0; c < c1; ++c) df[c - g0] = bf ? Bf16BitsToFloat(xr[c]) : Fp16ToFloat(xr[c]);
        }
      } else {
        for (int64_t c = g0; c < c1; ++c) {
          const uint16_t v = xr[w.perm[c]];
          df[c - g0] = bf ? Bf16BitsToFloat(v) : Fp16ToFloat(v);
        }
      }
      for (int64_t c = c1; c < g0 + gb; ++c) df[c - g0] = 0.0f;
    }
  }
}

LB_AVX512 void DequantW4Avx(const uint8_t* packed, const float* sc, const float* zf, int64_t kh, int64_t groups,
                            int64_t gs, int64_t k, bool bf16, int64_t k0, int64_t kb, float* out) {
  const __m512i m15 = _mm512_set1_epi32(15);
  for (int64_t kk = 0; kk < kb; kk += 2) {
    const int64_t c = k0 + kk;
    const uint8_t* b = packed + (c / 2) * kNR;
    for (int h = 0; h < 2; ++h) {
      const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 16 * h)));
      for (int t = 0; t < 2; ++t) {
        if (kk + t >= kb) break;
        const int64_t g = std::min((c + t) / gs, groups - 1);
        const __m512i code = _mm512_and_si512(t ? _mm512_srli_epi32(v, 4) : v, m15);
        __m512 f = _mm512_sub_ps(_mm512_cvtepi32_ps(code), _mm512_loadu_ps(zf + g * kNR + 16 * h));
        f = _mm512_mul_ps(f, _mm512_loadu_ps(sc + g * kNR + 16 * h));
        if (bf16) {
          __m512i bits = _mm512_castps_si512(f);
          const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
          bits = _mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF)));
          bits = _mm512_and_si512(bits, _mm512_set1_epi32(static_cast<int>(0xFFFF0000u)));
          f = _mm512_castsi512_ps(bits);
        } else {
          f = _mm512_cvtph_ps(_mm512_cvtps_ph(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        }
        _mm512_store_ps(out + (kk + t) * kNR + 16 * h, f);
      }
    }
  }
  (void)k;
}

void CpuBackend::DequantW4(const CpuWeight& w, DType act, int64_t p, int64_t k0, int64_t kb, float* out) {
  const int64_t kh = (w.k() + 1) / 2, groups = w.groups, gs = w.group_size();
  const uint8_t* packed = w.packed.data() + p * kh * kNR;
  const float* sc = w.w4_scale.data() + p * groups * kNR;
  const float* zf = w.w4_zf.data() + p * groups * kNR;
  if (avx_) {
    DequantW4Avx(packed, sc, zf, kh, groups, gs, w.k(), act == DType::kBF16, k0, kb, out);
    return;
  }
  if (avx2_) {
    if (act == DType::kBF16) {
      DequantW4Avx2<true>(packed, sc, zf, groups, gs, k0, kb, out);
    } else {
      DequantW4Avx2<false>(packed, sc, zf, groups, gs, k0, kb, out);
    }
    return;
  }
  for (int64_t kk = 0; kk < kb; ++kk) {
    const int64_t c = k0 + kk;
    const int64_t g = std::min(c / gs, groups - 1);
    for (int j = 0; j < kNR; ++j) {
      const uint8_t b = packed[(c / 2) * kNR + j];
      const int code = (c % 2 == 0) ? (b & 15) : (b >> 4);
      const float f = (static_cast<float>(code) - zf[g * kNR + j]) * sc[g * kNR + j];
      out[kk * kNR + j] = RoundToDType(f, act);
    }
  }
}

void CpuBackend::Epilogue(Kind kind, const GemmArgs& a, const CpuWeight& w, int64_t r0, int64_t mb, int64_t c0,
                          int64_t nc, const uint32_t* c, int64_t cs) {
  const int64_t n = w.n();
  const bool wpc = w.wscale.size() > 1;
  for (int64_t r = 0; r < mb; ++r) {
    const int64_t row = r0 + r;
    const float as = kind == Kind::kW4 ? 1.0f : a.x_scale[a.x_scale_count == 1 ? 0 : row];
    int64_t j0 = 0;
    if (avx_ || avx2_)
      j0 = EpilogueRowAvx2(kind, c + r * cs, kind == Kind::kI8 ? w.colsum.data() + c0 : nullptr,
                           kind == Kind::kW4 ? nullptr : w.wscale.data() + (wpc ? c0 : 0), wpc, as,
                           a.bias ? a.bias + c0 : nullptr, a.y_dtype, a.y, row * n + c0, nc);
    for (int64_t j = j0; j < nc; ++j) {
      const int64_t col = c0 + j;
      const uint32_t cv = c[r * cs + j];
      float v;
      if (kind == Kind::kI8) {
        const int32_t acc = static_cast<int32_t>(cv) - 128 * w.colsum[col];
        v = static_cast<float>(acc) * w.wscale[wpc ? col : 0];
        v = v * as;
      } else if (kind == Kind::kFp8) {
        v = std::bit_cast<float>(cv) * w.wscale[wpc ? col : 0];
        v = v * as;
      } else {
        v = std::bit_cast<float>(cv);
      }
      if (a.bias) v = v + a.bias[col];
      ref::StoreFloat(a.y_dtype, a.y, row * n + col, v);
    }
  }
}

void CpuBackend::RunGemm(Kind kind, const GemmArgs& a, const CpuWeight& w) {
  const int64_t m = a.m, n = w.n();
  const int64_t tasks_m = (m + kMB - 1) / kMB;
  const int64_t tasks_n = (w.panels + kPanelsPerTask - 1) / kPanelsPerTask;
  const MicroSet& ms = kind == Kind::kI8 ? i8_ : kind == Kind::kFp8 ? fp8_ : w4_;
  constexpr int64_t cs = kPanelsPerTask * kNR;
  const int64_t xs = kGB * ms.xw;
  pool_.ParallelFor(tasks_m * tasks_n, [&](int worker, int64_t t) {
    Scratch& s = scratch_[worker];
    if (s.x.size() < static_cast<size_t>(kMB * xs)) s.x.resize(kMB * xs);
    if (s.c.size() < static_cast<size_t>(kMB * cs)) s.c.resize(kMB * cs);
    if ((kind == Kind::kW4 || avx2_) && s.w.size() < static_cast<size_t>(2 * kGB * kNR)) s.w.resize(2 * kGB * kNR);
    const int64_t tm = t / tasks_n, tn = t % tasks_n;
    const int64_t r0 = tm * kMB, mb = std::min(kMB, m - r0);
    const int64_t p0 = tn * kPanelsPerTask, np = std::min(kPanelsPerTask, w.panels - p0);
    const bool fp8_f32 = avx2_ && kind == Kind::kFp8 && mb > 1;  // widened weights, f32 tile
    const MicroSet& mset = fp8_f32 ? w4_ : ms;
    for (int64_t g0 = 0; g0 < w.kgroups; g0 += kGB) {
      const int64_t gb = std::min(kGB, w.kgroups - g0);
      PackX(kind, a, w, r0, mb, g0, gb, s);
      for (int64_t pi = 0; pi < np; ++pi) {
        const int64_t p = p0 + pi;
        const uint8_t* wp;
        if (kind == Kind::kW4) {
          DequantW4(w, a.x_dtype, p, g0, gb, s.w.data());
          wp = reinterpret_cast<const uint8_t*>(s.w.data());
        } else if (fp8_f32) {
          WidenE4M3PanelAvx2(w.packed.data() + (p * w.kgroups + g0) * w.group_bytes, gb, s.w.data());
          wp = reinterpret_cast<const uint8_t*>(s.w.data());
        } else {
          wp = w.packed.data() + (p * w.kgroups + g0) * w.group_bytes;
        }
        for (int64_t rr = 0; rr < mb; rr += mset.mr) {
          const int mr = static_cast<int>(std::min<int64_t>(mset.mr, mb - rr));
          mset.fn[mr](s.x.data() + rr * xs, xs, wp, fp8_f32 ? 2 * gb : gb, s.c.data() + rr * cs + pi * kNR, cs, g0 > 0);
        }
      }
    }
    const int64_t c0 = p0 * kNR, nc = std::min(np * kNR, n - c0);
    Epilogue(kind, a, w, r0, mb, c0, nc, s.c.data(), cs);
  });
}

Status CpuBackend::GemmW8A8(const GemmArgs& a) {
  LOWBIT_KRETURN_IF_ERROR(ValidateGemm("GemmW8A8", a, WeightKind::kInt8, name_));
  const auto& w = static_cast<const CpuWeight&>(*a.w);
  if (reference_) {
    Int8WeightSource src{
        w.ref_i8.data(), w.n(), w.k(), {w.wscale.data(), DType::kF32, static_cast<int64_t>(w.wscale.size())}};
    ref::GemmW8A8(a.m, static_cast<const int8_t*>(a.x), a.x_scale, a.x_scale_count, src, a.bias, a.y_dtype, a.y);
    return Status::Ok();
  }
  RunGemm(Kind::kI8, a, w);
  return Status::Ok();
}

Status CpuBackend::GemmFp8(const GemmArgs& a) {
  LOWBIT_KRETURN_IF_ERROR(ValidateGemm("GemmFp8", a, WeightKind::kFp8, name_));
  const auto& w = static_cast<const CpuWeight&>(*a.w);
  if (reference_) {
    Fp8WeightSource src{
        w.ref_u8.data(), w.n(), w.k(), {w.wscale.data(), DType::kF32, static_cast<int64_t>(w.wscale.size())}};
    ref::GemmFp8(a.m, static_cast<const uint8_t*>(a.x), a.x_scale, a.x_scale_count, src, a.bias, a.y_dtype, a.y);
    return Status::Ok();
  }
  RunGemm(Kind::kFp8, a, w);
  return Status::Ok();
}

Status CpuBackend::GemmW4A16(const GemmArgs& a) {
  LOWBIT_KRETURN_IF_ERROR(ValidateGemm("GemmW4A16", a, WeightKind::kInt4, name_));
  const auto& w = static_cast<const CpuWeight&>(*a.w);
  if (reference_) {
    Int4WeightSource src;
    src.weight_packed = w.ref_packed.data();
    src.n = w.n();
    src.k = w.k();
    src.group_size = w.group_size();
    src.scale = {w.ref_scale.data(), DType::kF32, static_cast<int64_t>(w.ref_scale.size())};
    src.zero_point_packed = w.ref_zp.empty() ? nullptr : w.ref_zp.data();
    src.g_idx = w.ref_gidx.empty() ? nullptr : w.ref_gidx.data();
    ref::GemmW4A16(a.m, a.x_dtype, a.x, src, a.bias, a.y);
    return Status::Ok();
  }
  RunGemm(Kind::kW4, a, w);
  return Status::Ok();
}

bool CpuHasAvx512Kernels() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bf16");
}

}  // namespace

bool CpuHasAvx2Kernels() { return CpuHasAvx2KernelsImpl(); }

std::string CpuIsa() {
  if (CpuHasAvx512Kernels()) return "avx512-vnni-bf16";
  if (CpuHasAvx2KernelsImpl()) return "avx2-fma-f16c";
  return "generic";
}

namespace {
Isa IsaFor(std::string_view name) {
  if (name == "cpu-generic") return Isa::kGeneric;
  if (name == "cpu-avx2") return CpuHasAvx2KernelsImpl() ? Isa::kAvx2 : Isa::kGeneric;
  if (CpuHasAvx512Kernels()) return Isa::kAvx512;
  if (CpuHasAvx2KernelsImpl()) return Isa::kAvx2;
  return Isa::kGeneric;
}
}  // namespace

std::unique_ptr<Backend> MakeCpuBackend(std::string_view name, const BackendOptions& options) {
  int threads = options.threads;
  if (threads <= 0) threads = std::max(1u, std::thread::hardware_concurrency());
  const bool reference = options.reference || name == "cpu-ref";
  return std::make_unique<CpuBackend>(std::string(name), threads, reference, IsaFor(name));
}

}  // namespace lowbit::kernels
