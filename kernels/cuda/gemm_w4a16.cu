// W4A16 kernels. Dequantized weight: W'[n,k] = round_act((code − 8 − z[n,g]) · s[n,g]), g = k / gs
// in the kernel's (act-order-permuted) column order; accumulation in f32.
//   * GemvW4MmaKernel, GemvW4SplitKernel (M ≤ 16, K % 32 == 0, "cuda"): weight streaming on the
//     tensor cores, the weight dequantized in registers (below); 16 weight rows per block, or 128
//     with K split across blocks (from M = 5: the activation read once per 128 rows).
//   * GemvW4Kernel (M ≤ 16, "cuda-simple" and other K): one warp per output column, each lane
//     reads packed int32 words (8 codes), dequantizes and multiplies with every activation row.
//   * GemmW4SimpleKernel: a plain tiled kernel (64×64 tiles, f32 FMA) for any M ("cuda-simple").
//   * DequantW4Kernel + cuBLAS (large M, "cuda"): W' materialized in the activation dtype in
//     the workspace, then cublasGemmEx with f32 accumulation into f32, then bias + rounding.
// Needs K % 8 == 0 and a group size that is a multiple of 8 (a packed word never straddles
// two groups).
#include <type_traits>

#include "kernels/cuda/common.cuh"

namespace lowbit::kernels::cuda {
namespace {

// W4Dev::packed holds q = code − 8 as signed nibbles (CUTLASS's int4b_t); XOR with this turns a
// word's nibbles back into codes 0..15.
constexpr uint32_t kNibbleBias = 0x88888888u;

// (code − 8 − z) · s in f32 for code j of a word (codes 0..15, after the XOR), before the rounding
// to the activation type: the reference's dequantization.
__device__ __forceinline__ float DequantCode(uint32_t word, int j, float z, float s) {
  return __fmul_rn(__fsub_rn(static_cast<float>(static_cast<int>((word >> (4 * j)) & 15u) - 8), z), s);
}

__device__ __forceinline__ float DequantOne(const W4Dev& w, int xt, int64_t nn, int64_t kk, int64_t words) {
  const uint32_t word = static_cast<uint32_t>(w.packed[nn * words + kk / 8]) ^ kNibbleBias;
  const int64_t g = kk / w.group_size;
  const float z = w.zero ? w.zero[nn * w.groups + g] : 0.0f;
  return RoundTo(xt, DequantCode(word, static_cast<int>(kk % 8), z, w.scale[nn * w.groups + g]));
}

constexpr int kMaxGemvM = 16;

__global__ void __launch_bounds__(256)
    GemvW4Kernel(int xt, const void* __restrict__ x, W4Dev w, const float* __restrict__ bias, int64_t m, int64_t n,
                 int64_t k, void* y) {
  const int lane = threadIdx.x & 31;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * 8 + threadIdx.x / 32;
  if (col >= n) return;
  const int64_t words = k / 8;
  float acc[kMaxGemvM];
#pragma unroll
  for (int i = 0; i < kMaxGemvM; ++i) acc[i] = 0.0f;
  for (int64_t wi = lane; wi < words; wi += 32) {
    const uint32_t word = static_cast<uint32_t>(w.packed[col * words + wi]) ^ kNibbleBias;
    const int64_t g = (wi * 8) / w.group_size;
    const float s = w.scale[col * w.groups + g];
    const float z = w.zero ? w.zero[col * w.groups + g] : 0.0f;
    float wv[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) wv[j] = RoundTo(xt, DequantCode(word, j, z, s));
#pragma unroll
    for (int i = 0; i < kMaxGemvM; ++i) {
      if (i >= m) break;
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[i] = fmaf(LoadElem(xt, x, i * k + wi * 8 + j), wv[j], acc[i]);
    }
  }
#pragma unroll
  for (int i = 0; i < kMaxGemvM; ++i) {
    if (i >= m) break;
    float v = acc[i];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == 0) {
      if (bias) v = __fadd_rn(v, bias[col]);
      StoreElem(xt, y, i * n + col, v);
    }
  }
}

// ---- M ≤ 16 on the tensor cores: mma.sync m16n8k16 (f16/bf16 in, f32 accumulators; sm_80+) ----
// A warp owns 16 weight rows (two mma n-tiles of 8) over some of K's 128-code steps (W4MmaRows);
// the tokens are the mma's 16 rows. Lane (g, t) = (lane / 4, lane % 4) streams 16 bytes (4 packed
// words, 32 codes) of weight rows n0 + g and n0 + 8 + g per step of 128 codes, at codes
// 32·t … 32·t + 31, dequantizes them in registers exactly as DequantOne does and reads the same
// codes' activations of tokens g and g + 8. The mma pairs A and B elements by position within a
// thread group, so feeding both operands the same codes in the same register order computes the
// dot products whatever order K is walked in: each word's codes 0–3 feed one mma, 4–7 the next.
// Partial sums over K are added in a fixed order (the same bits every run).
constexpr int kW4Warps = 8;
constexpr int kW4Unroll = 2;  // steps (16-byte loads per weight row) in flight per lane

// The f16 / bf16 pieces of the kernel: packing two values, the output rounding, the mma.
template <class T>
struct W4Mma {
  static constexpr bool kBf16 = std::is_same_v<T, __nv_bfloat16>;
  __device__ static uint32_t Pack(float lo, float hi) {
    uint32_t bits;
    if constexpr (kBf16) {
      __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
      bits = *reinterpret_cast<uint32_t*>(&v);
    } else {
      __half2 v = __floats2half2_rn(lo, hi);
      bits = *reinterpret_cast<uint32_t*>(&v);
    }
    return bits;
  }
  __device__ static T Round(float v) {
    if constexpr (kBf16)
      return __float2bfloat16_rn(v);
    else
      return __float2half_rn(v);
  }
  // (a − b) · s on packed pairs of T, each operation rounded in T.
  __device__ static uint32_t SubMul(uint32_t a, uint32_t b, uint32_t s) {
    uint32_t bits;
    if constexpr (kBf16) {
      const __nv_bfloat162 r =
          __hmul2(__hsub2(*reinterpret_cast<const __nv_bfloat162*>(&a), *reinterpret_cast<const __nv_bfloat162*>(&b)),
                  *reinterpret_cast<const __nv_bfloat162*>(&s));
      bits = *reinterpret_cast<const uint32_t*>(&r);
    } else {
      const __half2 r = __hmul2(__hsub2(*reinterpret_cast<const __half2*>(&a), *reinterpret_cast<const __half2*>(&b)),
                                *reinterpret_cast<const __half2*>(&s));
      bits = *reinterpret_cast<const uint32_t*>(&r);
    }
    return bits;
  }
  __device__ static void Mma(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                             uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define LOWBIT_W4_MMA(TYPE)                                                   \
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." TYPE "." TYPE         \
               ".f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n" \
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])               \
               : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1))
    if constexpr (kBf16)
      LOWBIT_W4_MMA("bf16");
    else
      LOWBIT_W4_MMA("f16");
#undef LOWBIT_W4_MMA
#else
    __trap();  // compiled for an arch without this mma: never silently return zeros
#endif
  }
};

// Codes j, j + 1 of a word dequantized as DequantOne does — ((code − 8) − z) · s, rounded to T —
// and packed. The float whose bits are 0x4B000000 | code is 2^23 + code, and zc = 2^23 + 8 + z
// (z an integer zero point, |z| ≤ 8): their difference is code − 8 − z exactly, in one add.
template <class T>
__device__ __forceinline__ uint32_t DequantPair(uint32_t word, int j, float zc, float s) {
  const float c0 = __fsub_rn(__int_as_float(0x4B000000 | ((word >> (4 * j)) & 15u)), zc);
  const float c1 = __fsub_rn(__int_as_float(0x4B000000 | ((word >> (4 * j + 4)) & 15u)), zc);
  return W4Mma<T>::Pack(__fmul_rn(c0, s), __fmul_rn(c1, s));
}

// The same pair in packed T arithmetic, for symmetric weights whose scales are T values (the
// backend checks at load): the T whose bits are kMagic | code is 128 + code (bf16) or 1024 + code
// (f16), so subtracting 136 / 1032 leaves code − 8 exactly, and the product with s is rounded once
// in T — the reference's round_T((code − 8) · s), the f32 product being exact. Two codes cost two
// shifts, two logic operations, one subtraction and one multiplication.
template <class T>
__device__ __forceinline__ uint32_t DequantPairPacked(uint32_t word, int j, uint32_t s2) {
  constexpr uint32_t kMagic = W4Mma<T>::kBf16 ? 0x43004300u : 0x64006400u;
  constexpr uint32_t kBias = W4Mma<T>::kBf16 ? 0x43084308u : 0x64086408u;
  const uint32_t t = word >> (4 * j);
  const uint32_t pair = (t & 0xFu) | ((t << 12) & 0xF0000u) | kMagic;
  return W4Mma<T>::SubMul(pair, kBias, s2);
}

// One warp's share of the tensor-core GEMV: weight rows n0 … n0 + 15 (two mma n-tiles of 8)
// against every token, over the 128-code steps begin, begin + stride, … < end, accumulated into c.
// c[r][0], c[r][1]: token g, weight rows n0 + 8r + 2t, + 1; c[r][2], c[r][3]: token g + 8.
template <class T, bool kUpperRows, bool kPacked>
__device__ __forceinline__ void W4MmaRows(const T* __restrict__ x, const W4Dev& w, int64_t m, int64_t n, int64_t k,
                                          int64_t n0, int64_t begin, int64_t end, int64_t stride, float (&c)[2][4]) {
  const int lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;
  const int64_t words = k / 8;
  const int64_t rows[2] = {n0 + g, n0 + 8 + g};
  const bool row_ok[2] = {rows[0] < n, rows[1] < n};
  const bool lo_ok = g < m, hi_ok = kUpperRows && g + 8 < m;
  const T* xlo = x + static_cast<int64_t>(g) * k;
  const T* xhi = x + static_cast<int64_t>(g + 8) * k;
  const bool one_group = w.group_size % 32 == 0;  // a lane's 32 codes share a group
  // Group of column kk: a shift for power-of-two group sizes (128, and K = 2^j per channel),
  // else a 32-bit division (K < 2^31) — not the 64-bit one, ≈ 70 instructions, in the inner loop.
  const uint32_t gsize = static_cast<uint32_t>(w.group_size);
  const int gshift = (gsize & (gsize - 1)) == 0 ? __ffs(static_cast<int>(gsize)) - 1 : -1;
  const auto group_of = [&](int64_t kk) -> int64_t {
    const uint32_t c = static_cast<uint32_t>(kk);
    return gshift >= 0 ? (c >> gshift) : c / gsize;
  };
  for (int64_t s0 = begin; s0 < end; s0 += stride * kW4Unroll) {
    int4 wv[kW4Unroll][2];
#pragma unroll
    for (int u = 0; u < kW4Unroll; ++u) {
      const int64_t step = s0 + static_cast<int64_t>(u) * stride, kb = step * 128 + 32 * t;
      const bool k_ok = step < end && kb < k;
#pragma unroll
      for (int r = 0; r < 2; ++r)
        wv[u][r] = (row_ok[r] && k_ok) ? LoadStreamed16(w.packed + rows[r] * words + kb / 8) : make_int4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < kW4Unroll; ++u) {
      const int64_t step = s0 + static_cast<int64_t>(u) * stride, kb = step * 128 + 32 * t;
      // Every lane runs every mma (mma.sync is warp-wide): lanes past K feed zeros.
      const bool k_ok = step < end && kb < k;
      float sc[2][4], zr[2][4];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int64_t base = (row_ok[r] ? rows[r] : 0) * w.groups;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int64_t gi = base + (k_ok ? group_of(one_group ? kb : kb + 8 * j) : 0);
          if (j == 0 || !one_group) {
            sc[r][j] = __ldg(w.scale + gi);
            zr[r][j] = 8388616.0f + (w.zero ? __ldg(w.zero + gi) : 0.0f);  // exact: see DequantPair
          } else {
            sc[r][j] = sc[r][0];
            zr[r][j] = zr[r][0];
          }
        }
      }
      uint32_t s2[2][4];  // the scales as packed pairs of T (kPacked)
#pragma unroll
      for (int r = 0; r < 2; ++r)
#pragma unroll
        for (int j = 0; j < 4; ++j) s2[r][j] = kPacked ? W4Mma<T>::Pack(sc[r][j], sc[r][j]) : 0u;
      const uint32_t* wq[2] = {reinterpret_cast<const uint32_t*>(&wv[u][0]),
                               reinterpret_cast<const uint32_t*>(&wv[u][1])};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int64_t kk = kb + 8 * j;
        const int4 lo = (k_ok && lo_ok) ? __ldg(reinterpret_cast<const int4*>(xlo + kk)) : make_int4(0, 0, 0, 0);
        const int4 hi = (k_ok && hi_ok) ? __ldg(reinterpret_cast<const int4*>(xhi + kk)) : make_int4(0, 0, 0, 0);
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const uint32_t word = wq[r][j] ^ kNibbleBias;
          uint32_t b[4];
#pragma unroll
          for (int p = 0; p < 4; ++p)
            b[p] =
                kPacked ? DequantPairPacked<T>(word, 2 * p, s2[r][j]) : DequantPair<T>(word, 2 * p, zr[r][j], sc[r][j]);
          W4Mma<T>::Mma(c[r], lo.x, hi.x, lo.y, hi.y, b[0], b[1]);
          W4Mma<T>::Mma(c[r], lo.z, hi.z, lo.w, hi.w, b[2], b[3]);
        }
      }
    }
  }
}

// Output (token, weight row) of accumulator i of n-tile r for this lane (see W4MmaRows).
struct W4Out {
  int64_t gm, gn;
};
__device__ __forceinline__ W4Out W4OutPos(int64_t n0, int r, int i) {
  const int lane = threadIdx.x & 31;
  return {(lane >> 2) + (i >= 2 ? 8 : 0), n0 + 8 * r + 2 * (lane & 3) + (i & 1)};
}

// 16 weight rows per block, its kW4Warps warps splitting K (step w, w + kW4Warps, …); the warps'
// partial sums added in a fixed order through shared memory.
template <class T, bool kUpperRows, bool kPacked>
__global__ void __launch_bounds__(kW4Warps * 32)
    GemvW4MmaKernel(const T* __restrict__ x, W4Dev w, const float* __restrict__ bias, int64_t m, int64_t n, int64_t k,
                    T* __restrict__ y) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kGemvW4Rows;
  float c[2][4] = {};
  W4MmaRows<T, kUpperRows, kPacked>(x, w, m, n, k, n0, warp, (k + 127) / 128, kW4Warps, c);
  __shared__ float part[kW4Warps][2][4][32];
#pragma unroll
  for (int r = 0; r < 2; ++r)
#pragma unroll
    for (int i = 0; i < 4; ++i) part[warp][r][i][lane] = c[r][i];
  __syncthreads();
  if (warp >= 2) return;
  const int r = warp;  // warp 0 finishes n-tile 0, warp 1 n-tile 1
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    float v = 0.0f;
#pragma unroll
    for (int q = 0; q < kW4Warps; ++q) v = __fadd_rn(v, part[q][r][i][lane]);
    const W4Out o = W4OutPos(n0, r, i);
    if (o.gm >= m || o.gn >= n) continue;
    if (bias) v = __fadd_rn(v, bias[o.gn]);
    y[o.gm * n + o.gn] = W4Mma<T>::Round(v);
  }
}

// kGemvW4SplitRows weight rows per block, warp w owning rows 16w … 16w + 15 of them over the block's
// slice of K (blockIdx.y: steps [slice · slice_steps, …)), so a block reads its slice of the
// activation once for 128 weight rows where the kernel above reads all of it for 16 — at M = 16
// the activation re-reads, not the weight, would bound that one. With one slice the warps write
// Y; with several each block writes its partial sums to part[slice][M][tiles · kGemvW4SplitRows], and
// the last block of a row tile to arrive (a ticket per tile, reset by that block for the next
// launch) adds the slices in order 0, 1, … — the same bits whichever block comes last
// (common.cuh: PlanGemvSplit, LastSliceBlock). Two blocks per SM (≤ 128 registers; the plan
// sizes the grid for that).
static_assert(kGemvW4SplitRows == 16 * kW4Warps);
constexpr int kW4SplitBlocksPerSm = 2;

template <class T, bool kUpperRows, bool kPacked>
__global__ void __launch_bounds__(kW4Warps * 32, kW4SplitBlocksPerSm)
    GemvW4SplitKernel(const T* __restrict__ x, W4Dev w, const float* __restrict__ bias, int64_t m, int64_t n, int64_t k,
                      int64_t slice_steps, float* __restrict__ part, unsigned* __restrict__ tickets,
                      T* __restrict__ y) {
  const int warp = threadIdx.x >> 5;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kGemvW4SplitRows + 16 * warp;
  const int64_t steps = (k + 127) / 128, begin = static_cast<int64_t>(blockIdx.y) * slice_steps;
  float c[2][4] = {};
  const int64_t end = begin + slice_steps < steps ? begin + slice_steps : steps;
  W4MmaRows<T, kUpperRows, kPacked>(x, w, m, n, k, n0, begin, end, 1, c);
  const int slices = static_cast<int>(gridDim.y);
  if (slices > 1) {
    const int64_t ld = static_cast<int64_t>(gridDim.x) * kGemvW4SplitRows;
    const int64_t col[2] = {W4OutPos(n0, 0, 0).gn, W4OutPos(n0, 1, 0).gn};
    StoreSlicePartials(part, ld, m, col, c);
    if (!LastSliceBlock(tickets, blockIdx.x, slices)) return;
    SumSlicePartials(part, ld, m, slices, col, c);
  }
#pragma unroll
  for (int r = 0; r < 2; ++r)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const W4Out o = W4OutPos(n0, r, i);
      if (o.gm >= m || o.gn >= n) continue;
      float v = c[r][i];
      if (slices == 1) v = __fadd_rn(0.0f, v);  // the sum starts from +0, as the reduction's does
      if (bias) v = __fadd_rn(v, bias[o.gn]);
      y[o.gm * n + o.gn] = W4Mma<T>::Round(v);
    }
}

constexpr int kBM = 64, kBN = 64, kBK = 16;

// Generic tiled f32 GEMM: Y = epilogue(Σ_k A(m,k)·B(n,k)).
template <class LoadA, class LoadB, class Epi>
__global__ void __launch_bounds__(256) TiledKernel(LoadA la, LoadB lb, Epi epi, int64_t m, int64_t n, int64_t k) {
  __shared__ float as[kBK][kBM + 1];
  __shared__ float bs[kBK][kBN + 1];
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kBM, n0 = static_cast<int64_t>(blockIdx.x) * kBN;
  float acc[4][4] = {};
  for (int64_t k0 = 0; k0 < k; k0 += kBK) {
    for (int i = threadIdx.x; i < kBM * kBK; i += 256) {
      const int r = i / kBK, c = i % kBK;
      const int64_t gk = k0 + c;
      as[c][r] = (m0 + r < m && gk < k) ? la(m0 + r, gk) : 0.0f;
      bs[c][r] = (n0 + r < n && gk < k) ? lb(n0 + r, gk) : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kBK; ++kk)
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(as[kk][ty * 4 + i], bs[kk][tx * 4 + j], acc[i][j]);
    __syncthreads();
  }
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) {
      const int64_t gm = m0 + ty * 4 + i, gn = n0 + tx * 4 + j;
      if (gm < m && gn < n) epi(gm, gn, acc[i][j]);
    }
}

struct ActLoad {
  int xt;
  const void* x;
  int64_t k;
  __device__ float operator()(int64_t r, int64_t c) const { return LoadElem(xt, x, r * k + c); }
};
struct W4Load {
  W4Dev w;
  int xt;
  int64_t words;
  __device__ float operator()(int64_t r, int64_t c) const { return DequantOne(w, xt, r, c, words); }
};
struct BiasEpi {
  const float* bias;
  int yt;
  void* y;
  int64_t n;
  __device__ void operator()(int64_t r, int64_t c, float v) const {
    if (bias) v = __fadd_rn(v, bias[c]);
    StoreElem(yt, y, r * n + c, v);
  }
};

// One thread per packed word: its 8 codes share a group (the group size is a multiple of 8), the
// values are DequantOne's, stored as one 16-byte piece of W' (16-bit types only).
__global__ void DequantW4Kernel(int xt, W4Dev w, int64_t n, int64_t words, uint4* out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n * words) return;
  const int64_t r = i / words, g = (i - r * words) * 8 / w.group_size;
  const uint32_t word = static_cast<uint32_t>(w.packed[i]) ^ kNibbleBias;
  const float sc = w.scale[r * w.groups + g];
  const float z = w.zero ? w.zero[r * w.groups + g] : 0.0f;
  uint32_t h[4];
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const float v = DequantCode(word, j, z, sc);
    const uint32_t bits =
        xt == kF16 ? __half_as_ushort(__float2half_rn(v)) : __bfloat16_as_ushort(__float2bfloat16_rn(v));
    h[j / 2] = j % 2 == 0 ? bits : h[j / 2] | (bits << 16);
  }
  out[i] = make_uint4(h[0], h[1], h[2], h[3]);
}

__global__ void BiasRoundKernel(const float* c, const float* bias, int64_t m, int64_t n, int yt, void* y) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= m * n) return;
  float v = c[i];
  if (bias) v = __fadd_rn(v, bias[i % n]);
  StoreElem(yt, y, i, v);
}

__global__ void PermuteKernel(const uint16_t* x, const int32_t* perm, int64_t m, int64_t k, uint16_t* out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= m * k) return;
  out[i] = x[(i / k) * k + perm[i % k]];
}

__global__ void BroadcastKernel(float* p, const float* src, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) p[i] = *src;
}

unsigned Blocks(int64_t n, int t) { return static_cast<unsigned>(CeilDiv(n, t)); }

template <class T, template <class, bool, bool> class Launch, class... Args>
void DispatchW4Mma(int64_t m, bool packed, Args... args) {
  if (m > 8 && packed)
    Launch<T, true, true>::Run(args...);
  else if (m > 8)
    Launch<T, true, false>::Run(args...);
  else if (packed)
    Launch<T, false, true>::Run(args...);
  else
    Launch<T, false, false>::Run(args...);
}

template <class T, bool kUpperRows, bool kPacked>
struct LaunchMma16 {
  static void Run(const void* x, const W4Dev& w, const float* bias, int64_t m, int64_t n, int64_t k, void* y,
                  cudaStream_t s) {
    GemvW4MmaKernel<T, kUpperRows, kPacked><<<Blocks(n, kGemvW4Rows), kW4Warps * 32, 0, s>>>(
        static_cast<const T*>(x), w, bias, m, n, k, static_cast<T*>(y));
  }
};

template <class T, bool kUpperRows, bool kPacked>
struct LaunchSplit {
  static void Run(const void* x, const W4Dev& w, const float* bias, int64_t m, int64_t n, int64_t k, void* y, dim3 grid,
                  int64_t slice_steps, const GemvSplitWork* work, cudaStream_t s) {
    GemvW4SplitKernel<T, kUpperRows, kPacked>
        <<<grid, kW4Warps * 32, 0, s>>>(static_cast<const T*>(x), w, bias, m, n, k, slice_steps,
                                        static_cast<float*>(work->part), work->tickets, static_cast<T*>(y));
  }
};

}  // namespace

Status LaunchGemvW4(int xt, const void* x, const W4Dev& w, const float* bias, int64_t m, int64_t n, int64_t k, void* y,
                    cudaStream_t s) {
  if (m > kMaxGemvM) return Internal("LaunchGemvW4: M > 16");
  GemvW4Kernel<<<Blocks(n, 8), 256, 0, s>>>(xt, x, w, bias, m, n, k, y);
  return CudaStatus(cudaGetLastError(), "GemvW4 launch");
}

Status LaunchGemvW4Mma(int xt, const void* x, const W4Dev& w, const float* bias, int64_t m, int64_t n, int64_t k,
                       void* y, bool scales_exact, const GemvSplitWork* split, int64_t* slices_used, cudaStream_t s) {
  if (m < 1 || m > kMaxGemvM || k % 32 != 0 || (xt != kBF16 && xt != kF16))
    return Internal("LaunchGemvW4Mma: needs 1 ≤ M ≤ 16, K % 32 == 0 and f16/bf16 activations");
  const bool packed = GemvW4MmaPacked(w, scales_exact);
  const bool bf16 = xt == kBF16;
  const GemvSplitPlan plan = PlanGemvSplit(split, kGemvW4SplitRows, 128, kW4SplitBlocksPerSm, sizeof(float), m, n, k);
  *slices_used = plan.slices;
  if (plan.slices > 0) {
    const dim3 grid(static_cast<unsigned>(plan.tiles), static_cast<unsigned>(plan.slices));
    if (bf16)
      DispatchW4Mma<__nv_bfloat16, LaunchSplit>(m, packed, x, w, bias, m, n, k, y, grid, plan.slice_steps, split, s);
    else
      DispatchW4Mma<__half, LaunchSplit>(m, packed, x, w, bias, m, n, k, y, grid, plan.slice_steps, split, s);
  } else if (bf16) {
    DispatchW4Mma<__nv_bfloat16, LaunchMma16>(m, packed, x, w, bias, m, n, k, y, s);
  } else {
    DispatchW4Mma<__half, LaunchMma16>(m, packed, x, w, bias, m, n, k, y, s);
  }
  return CudaStatus(cudaGetLastError(), "GemvW4Mma launch");
}

Status LaunchGemmW4Simple(int xt, const void* x, const W4Dev& w, const float* bias, int64_t m, int64_t n, int64_t k,
                          void* y, cudaStream_t s) {
  dim3 grid(Blocks(n, kBN), Blocks(m, kBM));
  if (grid.y > 65535) return InvalidArgument("GemmW4A16 (cuda): M = " + std::to_string(m) + " exceeds 65535·64");
  TiledKernel<<<grid, 256, 0, s>>>(ActLoad{xt, x, k}, W4Load{w, xt, k / 8}, BiasEpi{bias, xt, y, n}, m, n, k);
  return CudaStatus(cudaGetLastError(), "GemmW4Simple launch");
}

Status LaunchDequantW4(int xt, const W4Dev& w, int64_t n, int64_t k, void* out, cudaStream_t s) {
  if (xt == kF32) return InvalidArgument("DequantW4: f16 / bf16 only");
  DequantW4Kernel<<<Blocks(n * (k / 8), 256), 256, 0, s>>>(xt, w, n, k / 8, static_cast<uint4*>(out));
  return CudaStatus(cudaGetLastError(), "DequantW4 launch");
}

Status LaunchBiasRound(const float* c, const float* bias, int64_t m, int64_t n, int yt, void* y, cudaStream_t s) {
  BiasRoundKernel<<<Blocks(m * n, 256), 256, 0, s>>>(c, bias, m, n, yt, y);
  return CudaStatus(cudaGetLastError(), "BiasRound launch");
}

Status LaunchPermuteColumns(const void* x, const int32_t* perm, int64_t m, int64_t k, void* out, cudaStream_t s) {
  PermuteKernel<<<Blocks(m * k, 256), 256, 0, s>>>(static_cast<const uint16_t*>(x), perm, m, k,
                                                   static_cast<uint16_t*>(out));
  return CudaStatus(cudaGetLastError(), "PermuteColumns launch");
}

Status LaunchBroadcast(float* p, const float* src, int64_t n, cudaStream_t s) {
  BroadcastKernel<<<Blocks(n, 256), 256, 0, s>>>(p, src, n);
  return CudaStatus(cudaGetLastError(), "Broadcast launch");
}

// FP8 through the same tiled kernel.
namespace {
struct Fp8Load {
  const uint8_t* p;
  int64_t k;
  __device__ float operator()(int64_t r, int64_t c) const { return Fp8ToFloat(p[r * k + c]); }
};
struct Fp8Epi {
  const float* xs;
  int64_t xsc;
  const float* ws;
  int64_t wsc;
  const float* bias;
  int yt;
  void* y;
  int64_t n;
  __device__ void operator()(int64_t r, int64_t c, float v) const {
    v = v * ws[wsc == 1 ? 0 : c] * xs[xsc == 1 ? 0 : r];
    if (bias) v += bias[c];
    StoreElem(yt, y, r * n + c, v);
  }
};
}  // namespace

Status LaunchGemmFp8Simple(const uint8_t* x, const float* x_scale, int64_t x_scale_count, const uint8_t* w,
                           const float* w_scale, int64_t w_scale_count, const float* bias, int64_t m, int64_t n,
                           int64_t k, int yt, void* y, cudaStream_t s) {
  dim3 grid(Blocks(n, kBN), Blocks(m, kBM));
  if (grid.y > 65535) return InvalidArgument("GemmFp8 (cuda): M = " + std::to_string(m) + " exceeds 65535·64");
  TiledKernel<<<grid, 256, 0, s>>>(Fp8Load{x, k}, Fp8Load{w, k},
                                   Fp8Epi{x_scale, x_scale_count, w_scale, w_scale_count, bias, yt, y, n}, m, n, k);
  return CudaStatus(cudaGetLastError(), "GemmFp8Simple launch");
}

}  // namespace lowbit::kernels::cuda
