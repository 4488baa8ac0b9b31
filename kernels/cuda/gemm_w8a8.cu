// W8A8-INT8 GEMM: Y[m,n] = ((float)Σ_k X[m,k]·W[n,k] · w_scale[n]) · x_scale[m] + bias[n].
// Gemv8BitKernel / Gemv8BitSplitKernel stream the weight for M ≤ 16 on the 8-bit tensor cores
// (W8A8 and FP8, below; the split one, 64 rows per block with K split across blocks, from M = 5).
// GemmW8A8Kernel, for any M (and "cuda-simple"), is a plain shared-memory tiled kernel (64×64
// tile, 32-byte K step, 4×4 outputs per thread) with __dp4a and int32 accumulators. The epilogue
// uses explicitly rounded f32 operations (no FMA contraction), so the output is bit-identical to
// the CPU reference. Needs K % 4 == 0 (dword loads). Off sm_90 (or without CUTLASS) the backend
// takes cuBLASLt's int8 tensor cores for the accumulators at M > 16 where it has an algorithm
// (gemm_cublaslt.cu) and runs the same epilogue on them (W8A8EpilogueKernel).
#include <algorithm>

#include "kernels/cuda/common.cuh"

namespace lowbit::kernels::cuda {
namespace {

constexpr int kBM = 64, kBN = 64, kBK = 32;  // kBK in bytes (8 dwords)

// One output: the accumulator scaled by the weight channel's scale, then the token's, then the
// bias — each step rounded as the CPU reference rounds it.
__device__ __forceinline__ float W8A8Value(int32_t acc, float ws, float xs, const float* __restrict__ bias,
                                           int64_t gn) {
  float v = __fmul_rn(__int2float_rn(acc), ws);
  v = __fmul_rn(v, xs);
  if (bias) v = __fadd_rn(v, bias[gn]);
  return v;
}

__global__ void __launch_bounds__(256)
    GemmW8A8Kernel(const int8_t* __restrict__ x, const float* __restrict__ x_scale, int64_t x_scale_count,
                   const int8_t* __restrict__ w, const float* __restrict__ w_scale, int64_t w_scale_count,
                   const float* __restrict__ bias, int64_t m, int64_t n, int64_t k, int yt, void* y) {
  __shared__ int32_t as[kBM][kBK / 4 + 1];
  __shared__ int32_t bs[kBN][kBK / 4 + 1];
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kBM, n0 = static_cast<int64_t>(blockIdx.x) * kBN;
  int32_t acc[4][4] = {};
  const int64_t kd = k / 4;  // dwords per row
  const int32_t* xd = reinterpret_cast<const int32_t*>(x);
  const int32_t* wd = reinterpret_cast<const int32_t*>(w);
  for (int64_t k0 = 0; k0 < kd; k0 += kBK / 4) {
    for (int i = threadIdx.x; i < kBM * (kBK / 4); i += 256) {
      const int r = i / (kBK / 4), c = i % (kBK / 4);
      const int64_t gm = m0 + r, gk = k0 + c;
      as[r][c] = (gm < m && gk < kd) ? xd[gm * kd + gk] : 0;
      const int64_t gn = n0 + r;
      bs[r][c] = (gn < n && gk < kd) ? wd[gn * kd + gk] : 0;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kBK / 4; ++kk) {
      int32_t a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = as[ty * 4 + i][kk];
#pragma unroll
      for (int j = 0; j < 4; ++j) b[j] = bs[tx * 4 + j][kk];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = __dp4a(a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t gm = m0 + ty * 4 + i;
    if (gm >= m) continue;
    const float xs = x_scale[x_scale_count == 1 ? 0 : gm];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t gn = n0 + tx * 4 + j;
      if (gn >= n) continue;
      StoreElem(yt, y, gm * n + gn, W8A8Value(acc[i][j], w_scale[w_scale_count == 1 ? 0 : gn], xs, bias, gn));
    }
  }
}

// ---- small M: weight streaming on the 8-bit tensor cores (mma.sync m16n8k32) ----
// W8A8 (int8, int32 accumulators, sm_80+) and FP8 (e4m3, f32 accumulators, sm_89+). A warp owns
// 8 weight rows (the mma's n) over some of K's 64-byte steps (Mma8Rows); the tokens (M ≤ 16) are
// the mma's 16 rows. Each lane streams 16-byte pieces of one weight row — lane (g, t) =
// (lane / 4, lane % 4) reads row n0 + g at bytes k0 + 16·t … + 15 — and the same bytes of token
// rows g and g + 8. The mma pairs A and B elements by position within a thread group t, so
// feeding both operands the same bytes in the same register order computes the dot products
// whatever order K is walked in: dwords 0–1 of a piece feed one mma, dwords 2–3 the next.
// Partial sums over K are added in a fixed order (exact for int32).
constexpr int kGemvWarps = 4;
constexpr int kGemvUnroll = 4;  // 16-byte weight loads in flight per lane

struct Int8Mma {
  using Acc = int32_t;
  __device__ static void Mma(Acc (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
    __trap();  // compiled for an arch without int8 mma: never silently return zeros
#endif
  }
  __device__ static float Value(Acc acc, float ws, float xs, const float* bias, int64_t gn) {
    return W8A8Value(acc, ws, xs, bias, gn);
  }
};

struct Fp8Mma {
  using Acc = float;
  __device__ static void Mma(Acc (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
    __trap();  // compiled for an arch without e4m3 mma: never silently return zeros
#endif
  }
  // As the simple FP8 kernel: the sum times the weight scale, times the token scale, plus bias.
  __device__ static float Value(Acc acc, float ws, float xs, const float* bias, int64_t gn) {
    float v = __fmul_rn(__fmul_rn(acc, ws), xs);
    if (bias) v = __fadd_rn(v, bias[gn]);
    return v;
  }
};

// One warp's share of the 8-bit GEMV: weight rows n0 … n0 + 7 against every token, over the
// 64-byte steps begin, begin + stride, … < end of K, accumulated into c. kUpperRows: tokens
// 8..15 present (M > 8). c[0], c[1]: token g, weight rows n0 + 2t, n0 + 2t + 1; c[2], c[3]:
// token g + 8.
template <class Op, bool kUpperRows>
__device__ __forceinline__ void Mma8Rows(const uint8_t* __restrict__ x, const uint8_t* __restrict__ w, int64_t m,
                                         int64_t n, int64_t k, int64_t n0, int64_t begin, int64_t end, int64_t stride,
                                         typename Op::Acc (&c)[4]) {
  using Acc = typename Op::Acc;
  const int lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;
  const bool row_ok = n0 + g < n, lo_ok = g < m, hi_ok = kUpperRows && g + 8 < m;
  const uint8_t* wrow = w + (n0 + g) * k;
  const uint8_t* xlo = x + static_cast<int64_t>(g) * k;
  const uint8_t* xhi = x + static_cast<int64_t>(g + 8) * k;
  for (int64_t s0 = begin; s0 < end; s0 += stride * kGemvUnroll) {
    int4 wv[kGemvUnroll];
#pragma unroll
    for (int u = 0; u < kGemvUnroll; ++u) {
      const int64_t step = s0 + static_cast<int64_t>(u) * stride, off = step * 64 + t * 16;
      wv[u] = (row_ok && step < end && off < k) ? LoadStreamed16(wrow + off) : make_int4(0, 0, 0, 0);
    }
    // A fresh accumulator per iteration (8 mmas), promoted with an f32 add: the FP8 mma keeps
    // only ~13 mantissa bits of D between mmas (Ada/Hopper); exact and free for int32.
    Acc cs[4] = {0, 0, 0, 0};
#pragma unroll
    for (int u = 0; u < kGemvUnroll; ++u) {
      const int64_t step = s0 + static_cast<int64_t>(u) * stride, off = step * 64 + t * 16;
      const bool in = step < end && off < k;
      const int4 lo = (in && lo_ok) ? __ldg(reinterpret_cast<const int4*>(xlo + off)) : make_int4(0, 0, 0, 0);
      const int4 hi = (in && hi_ok) ? __ldg(reinterpret_cast<const int4*>(xhi + off)) : make_int4(0, 0, 0, 0);
      const uint32_t a0[4] = {static_cast<uint32_t>(lo.x), static_cast<uint32_t>(hi.x), static_cast<uint32_t>(lo.y),
                              static_cast<uint32_t>(hi.y)};
      const uint32_t a1[4] = {static_cast<uint32_t>(lo.z), static_cast<uint32_t>(hi.z), static_cast<uint32_t>(lo.w),
                              static_cast<uint32_t>(hi.w)};
      Op::Mma(cs, a0, static_cast<uint32_t>(wv[u].x), static_cast<uint32_t>(wv[u].y));
      Op::Mma(cs, a1, static_cast<uint32_t>(wv[u].z), static_cast<uint32_t>(wv[u].w));
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) c[i] += cs[i];
  }
}

// Output (token, weight row) of accumulator i of this lane (see Mma8Rows).
__device__ __forceinline__ void Gemv8Pos(int64_t n0, int i, int64_t* gm, int64_t* gn) {
  const int lane = threadIdx.x & 31;
  *gm = (lane >> 2) + (i >= 2 ? 8 : 0);
  *gn = n0 + 2 * (lane & 3) + (i & 1);
}

// The epilogue of one output (skipped outside [M, N]).
template <class Op>
__device__ __forceinline__ void Gemv8Store(typename Op::Acc acc, int64_t gm, int64_t gn, const float* x_scale,
                                           int64_t x_scale_count, const float* w_scale, int64_t w_scale_count,
                                           const float* bias, int64_t m, int64_t n, int yt, void* y) {
  if (gm >= m || gn >= n) return;
  const float xs = x_scale[x_scale_count == 1 ? 0 : gm];
  StoreElem(yt, y, gm * n + gn, Op::Value(acc, w_scale[w_scale_count == 1 ? 0 : gn], xs, bias, gn));
}

// 8 weight rows per block, its kGemvWarps warps splitting K (steps w, w + kGemvWarps, …); the
// warps' partial sums added in a fixed order through shared memory, warp 0 runs the epilogue.
template <class Op, bool kUpperRows>
__global__ void __launch_bounds__(kGemvWarps * 32)
    Gemv8BitKernel(const uint8_t* __restrict__ x, const float* __restrict__ x_scale, int64_t x_scale_count,
                   const uint8_t* __restrict__ w, const float* __restrict__ w_scale, int64_t w_scale_count,
                   const float* __restrict__ bias, int64_t m, int64_t n, int64_t k, int yt, void* y) {
  using Acc = typename Op::Acc;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kGemv8Rows;
  Acc c[4] = {0, 0, 0, 0};
  Mma8Rows<Op, kUpperRows>(x, w, m, n, k, n0, warp, (k + 63) / 64, kGemvWarps, c);
  __shared__ Acc part[kGemvWarps][32][4];
#pragma unroll
  for (int i = 0; i < 4; ++i) part[warp][lane][i] = c[i];
  __syncthreads();
  if (warp != 0) return;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    Acc acc = 0;
#pragma unroll
    for (int v = 0; v < kGemvWarps; ++v) acc += part[v][lane][i];
    int64_t gm, gn;
    Gemv8Pos(n0, i, &gm, &gn);
    Gemv8Store<Op>(acc, gm, gn, x_scale, x_scale_count, w_scale, w_scale_count, bias, m, n, yt, y);
  }
}

// kGemv8SplitRows weight rows per block, warp w owning rows 8w … 8w + 7 over the block's slice of
// K (blockIdx.y), so a block reads its slice of the activation once for 64 weight rows where the
// kernel above reads all of it for 8 (at M = 16 the int8 activation is twice the weight rows'
// bytes a block streams). Partial sums as in the int4 split kernel (common.cuh, "split-K"):
// int32 for W8A8, whose sum is exact in any order, f32 for FP8, added in slice order. Three
// blocks per SM (≤ 85 registers: FP8 spills under four's 64; the plan sizes the grid for that).
constexpr int kGemvSplitBlocksPerSm = 3;
constexpr int kGemvSplitWarps = 8;
static_assert(kGemv8SplitRows == 8 * kGemvSplitWarps);

template <class Op, bool kUpperRows>
__global__ void __launch_bounds__(kGemvSplitWarps * 32, kGemvSplitBlocksPerSm)
    Gemv8BitSplitKernel(const uint8_t* __restrict__ x, const float* __restrict__ x_scale, int64_t x_scale_count,
                        const uint8_t* __restrict__ w, const float* __restrict__ w_scale, int64_t w_scale_count,
                        const float* __restrict__ bias, int64_t m, int64_t n, int64_t k, int64_t slice_steps,
                        typename Op::Acc* __restrict__ part, unsigned* __restrict__ tickets, int yt, void* y) {
  using Acc = typename Op::Acc;
  const int warp = threadIdx.x >> 5;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kGemv8SplitRows + 8 * warp;
  const int64_t steps = (k + 63) / 64, begin = static_cast<int64_t>(blockIdx.y) * slice_steps;
  const int64_t end = begin + slice_steps < steps ? begin + slice_steps : steps;
  Acc c[1][4] = {};  // one n-tile (common.cuh's partial-sum helpers)
  Mma8Rows<Op, kUpperRows>(x, w, m, n, k, n0, begin, end, 1, c[0]);
  const int slices = static_cast<int>(gridDim.y);
  if (slices > 1) {
    const int64_t ld = static_cast<int64_t>(gridDim.x) * kGemv8SplitRows;
    int64_t gm, col[1];
    Gemv8Pos(n0, 0, &gm, &col[0]);
    StoreSlicePartials(part, ld, m, col, c);
    if (!LastSliceBlock(tickets, blockIdx.x, slices)) return;
    SumSlicePartials(part, ld, m, slices, col, c);
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    int64_t gm, gn;
    Gemv8Pos(n0, i, &gm, &gn);
    Gemv8Store<Op>(c[0][i], gm, gn, x_scale, x_scale_count, w_scale, w_scale_count, bias, m, n, yt, y);
  }
}

template <class Op>
Status LaunchGemv8Bit(const char* what, const void* x, const float* x_scale, int64_t x_scale_count, const void* w,
                      const float* w_scale, int64_t w_scale_count, const float* bias, int64_t m, int64_t n, int64_t k,
                      int yt, void* y, const GemvSplitWork* split, int64_t* slices_used, cudaStream_t s) {
  using Acc = typename Op::Acc;
  if (m < 1 || m > kW8A8GemvMaxM || k % 16 != 0)
    return InvalidArgument(std::string(what) + " (cuda): needs 1 ≤ M ≤ 16 and K % 16 == 0; got M = " +
                           std::to_string(m) + ", K = " + std::to_string(k));
  const int64_t blocks = CeilDiv(n, kGemv8Rows);
  if (blocks > 0x7fffffff)
    return InvalidArgument(std::string(what) + " (cuda): N = " + std::to_string(n) + " is too large");
  const auto* xb = static_cast<const uint8_t*>(x);
  const auto* wb = static_cast<const uint8_t*>(w);
  const GemvSplitPlan plan = PlanGemvSplit(split, kGemv8SplitRows, 64, kGemvSplitBlocksPerSm, sizeof(Acc), m, n, k);
  *slices_used = plan.slices;
  if (plan.slices > 0) {
    const dim3 grid(static_cast<unsigned>(plan.tiles), static_cast<unsigned>(plan.slices));
    auto* part = static_cast<Acc*>(split->part);
    if (m > 8)
      Gemv8BitSplitKernel<Op, true>
          <<<grid, kGemvSplitWarps * 32, 0, s>>>(xb, x_scale, x_scale_count, wb, w_scale, w_scale_count, bias, m, n, k,
                                                 plan.slice_steps, part, split->tickets, yt, y);
    else
      Gemv8BitSplitKernel<Op, false>
          <<<grid, kGemvSplitWarps * 32, 0, s>>>(xb, x_scale, x_scale_count, wb, w_scale, w_scale_count, bias, m, n, k,
                                                 plan.slice_steps, part, split->tickets, yt, y);
  } else if (m > 8) {
    Gemv8BitKernel<Op, true><<<static_cast<unsigned>(blocks), kGemvWarps * 32, 0, s>>>(
        xb, x_scale, x_scale_count, wb, w_scale, w_scale_count, bias, m, n, k, yt, y);
  } else {
    Gemv8BitKernel<Op, false><<<static_cast<unsigned>(blocks), kGemvWarps * 32, 0, s>>>(
        xb, x_scale, x_scale_count, wb, w_scale, w_scale_count, bias, m, n, k, yt, y);
  }
  return CudaStatus(cudaGetLastError(), what);
}

__global__ void W8A8EpilogueKernel(const int32_t* __restrict__ acc, int64_t row0, int64_t rows,
                                   const float* __restrict__ x_scale, int64_t x_scale_count,
                                   const float* __restrict__ w_scale, int64_t w_scale_count,
                                   const float* __restrict__ bias, int64_t n, int yt, void* y) {
  const int64_t total = rows * n;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t gm = row0 + i / n, gn = i % n;
    const float xs = x_scale[x_scale_count == 1 ? 0 : gm];
    StoreElem(yt, y, gm * n + gn, W8A8Value(acc[i], w_scale[w_scale_count == 1 ? 0 : gn], xs, bias, gn));
  }
}

}  // namespace

Status LaunchW8A8Epilogue(const int32_t* acc, int64_t row0, int64_t rows, const float* x_scale, int64_t x_scale_count,
                          const float* w_scale, int64_t w_scale_count, const float* bias, int64_t n, int yt, void* y,
                          cudaStream_t s) {
  const int64_t blocks = std::min<int64_t>(CeilDiv(rows * n, 256), 65535);
  W8A8EpilogueKernel<<<static_cast<unsigned>(blocks), 256, 0, s>>>(acc, row0, rows, x_scale, x_scale_count, w_scale,
                                                                   w_scale_count, bias, n, yt, y);
  return CudaStatus(cudaGetLastError(), "W8A8 epilogue launch");
}

Status LaunchGemvW8A8(const int8_t* x, const float* x_scale, int64_t x_scale_count, const int8_t* w,
                      const float* w_scale, int64_t w_scale_count, const float* bias, int64_t m, int64_t n, int64_t k,
                      int yt, void* y, const GemvSplitWork* split, int64_t* slices_used, cudaStream_t s) {
  return LaunchGemv8Bit<Int8Mma>("GemvW8A8", x, x_scale, x_scale_count, w, w_scale, w_scale_count, bias, m, n, k, yt, y,
                                 split, slices_used, s);
}

Status LaunchGemvFp8(const uint8_t* x, const float* x_scale, int64_t x_scale_count, const uint8_t* w,
                     const float* w_scale, int64_t w_scale_count, const float* bias, int64_t m, int64_t n, int64_t k,
                     int yt, void* y, const GemvSplitWork* split, int64_t* slices_used, cudaStream_t s) {
  return LaunchGemv8Bit<Fp8Mma>("GemvFp8", x, x_scale, x_scale_count, w, w_scale, w_scale_count, bias, m, n, k, yt, y,
                                split, slices_used, s);
}

Status LaunchGemmW8A8(const int8_t* x, const float* x_scale, int64_t x_scale_count, const int8_t* w,
                      const float* w_scale, int64_t w_scale_count, const float* bias, int64_t m, int64_t n, int64_t k,
                      int yt, void* y, cudaStream_t s) {
  dim3 grid(static_cast<unsigned>(CeilDiv(n, kBN)), static_cast<unsigned>(CeilDiv(m, kBM)));
  if (grid.y > 65535) return InvalidArgument("GemmW8A8 (cuda): M = " + std::to_string(m) + " exceeds 65535·64");
  GemmW8A8Kernel<<<grid, 256, 0, s>>>(x, x_scale, x_scale_count, w, w_scale, w_scale_count, bias, m, n, k, yt, y);
  return CudaStatus(cudaGetLastError(), "GemmW8A8 launch");
}

}  // namespace lowbit::kernels::cuda
