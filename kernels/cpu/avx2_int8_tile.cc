#include "kernels/cpu/avx2_int8_tile.h"

#include <immintrin.h>

#include <cstring>

namespace lowbit::kernels::cpu {
namespace {

#define LB_AVX2 __attribute__((target("avx2,fma,f16c")))

// Four int16 activations (one k-group of one row), in every 64-bit lane.
LB_AVX2 inline __m256i Broadcast(const uint32_t* p) {
  int64_t v;
  std::memcpy(&v, p, 8);
  return _mm256_set1_epi64x(v);
}

// [c0a c0b c1a c1b | c2a c2b c3a c3b] and the same for c4..c7 → c0..c7 (the two partial sums of
// each column added), added to `c` when accumulating.
LB_AVX2 inline void Store(__m256i lo, __m256i hi, uint32_t* c, bool accumulate) {
  __m256i h = _mm256_permute4x64_epi64(_mm256_hadd_epi32(lo, hi), _MM_SHUFFLE(3, 1, 2, 0));
  if (accumulate) h = _mm256_add_epi32(h, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c)));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(c), h);
}

}  // namespace

LB_AVX2 void MicroI8Avx2Rows4(const uint32_t* x, int64_t xs, const uint8_t* w, int64_t groups, uint32_t* c, int64_t cs,
                              bool accumulate) {
  const uint32_t* x0 = x;
  const uint32_t* x1 = x + xs;
  const uint32_t* x2 = x + 2 * xs;
  const uint32_t* x3 = x + 3 * xs;
  for (int s = 0; s < 4; ++s) {  // 8-column sub-panels
    // rRj: row R, columns 4j..4j+3, each column as two partial sums (vpmaddwd pairs).
    __m256i r00 = _mm256_setzero_si256(), r01 = r00, r10 = r00, r11 = r00, r20 = r00, r21 = r00, r30 = r00, r31 = r00;
    const uint8_t* wg = w + s * groups * 32;
    for (int64_t g = 0; g < groups; ++g, wg += 32) {
      _mm_prefetch(reinterpret_cast<const char*>(wg + kWeightPrefetchGroups * 32), _MM_HINT_T0);
      const __m256i w0 = _mm256_cvtepi8_epi16(_mm_load_si128(reinterpret_cast<const __m128i*>(wg)));
      const __m256i w1 = _mm256_cvtepi8_epi16(_mm_load_si128(reinterpret_cast<const __m128i*>(wg + 16)));
      __m256i v = Broadcast(x0 + 2 * g);
      r00 = _mm256_add_epi32(r00, _mm256_madd_epi16(v, w0));
      r01 = _mm256_add_epi32(r01, _mm256_madd_epi16(v, w1));
      v = Broadcast(x1 + 2 * g);
      r10 = _mm256_add_epi32(r10, _mm256_madd_epi16(v, w0));
      r11 = _mm256_add_epi32(r11, _mm256_madd_epi16(v, w1));
      v = Broadcast(x2 + 2 * g);
      r20 = _mm256_add_epi32(r20, _mm256_madd_epi16(v, w0));
      r21 = _mm256_add_epi32(r21, _mm256_madd_epi16(v, w1));
      v = Broadcast(x3 + 2 * g);
      r30 = _mm256_add_epi32(r30, _mm256_madd_epi16(v, w0));
      r31 = _mm256_add_epi32(r31, _mm256_madd_epi16(v, w1));
    }
    Store(r00, r01, c + s * 8, accumulate);
    Store(r10, r11, c + cs + s * 8, accumulate);
    Store(r20, r21, c + 2 * cs + s * 8, accumulate);
    Store(r30, r31, c + 3 * cs + s * 8, accumulate);
  }
}

}  // namespace lowbit::kernels::cpu
