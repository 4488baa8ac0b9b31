// Shared device helpers for the CUDA backend.
#ifndef LOWBIT_KERNELS_CUDA_COMMON_CUH_
#define LOWBIT_KERNELS_CUDA_COMMON_CUH_

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <type_traits>

#include "common/dtype.h"
#include "kernels/status.h"

namespace lowbit::kernels::cuda {

// Element types as small integers usable in device code.
enum ElemType : int { kF32 = 0, kF16 = 1, kBF16 = 2 };
inline int ToElem(DType d) { return d == DType::kF32 ? kF32 : d == DType::kF16 ? kF16 : kBF16; }

__device__ __forceinline__ float LoadElem(int t, const void* p, int64_t i) {
  if (t == kF32) return static_cast<const float*>(p)[i];
  if (t == kF16) return __half2float(static_cast<const __half*>(p)[i]);
  return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
}
__device__ __forceinline__ void StoreElem(int t, void* p, int64_t i, float v) {
  if (t == kF32)
    static_cast<float*>(p)[i] = v;
  else if (t == kF16)
    static_cast<__half*>(p)[i] = __float2half_rn(v);
  else
    static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v);
}
// Rounds v to the 16-bit activation type (RNE), back in f32.
__device__ __forceinline__ float RoundTo(int t, float v) {
  if (t == kF16) return __half2float(__float2half_rn(v));
  if (t == kBF16) return __bfloat162float(__float2bfloat16_rn(v));
  return v;
}
__device__ __forceinline__ float Fp8ToFloat(uint8_t v) {
  __half_raw h = __nv_cvt_fp8_to_halfraw(static_cast<__nv_fp8_storage_t>(v), __NV_E4M3);
  return __half2float(__half(h));
}
// Round to nearest even; beyond ±448 (±inf included) saturates to ±448; NaN stays NaN with its
// sign (0x7F / 0xFF), as the reference (FloatToFp8E4M3) and PyTorch's e4m3fn conversion give it:
// the CUDA conversion returns the positive 0x7F for every NaN (its software path canonicalizes
// the NaN first), so a -NaN activation would quantize to another byte than on the CPU.
__device__ __forceinline__ uint8_t FloatToFp8(float v) {
  if (isnan(v)) return signbit(v) ? uint8_t{0xFF} : uint8_t{0x7F};
  return static_cast<uint8_t>(__nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3));
}
// The FP8 code of x · f (divide: x / f). A NaN activation keeps its sign (`negative`, read from
// the input's own bits): the reference's x86 arithmetic keeps a NaN operand's sign, while the GPU's
// f32 multiply and divide return their canonical +NaN, and f16 → f32 conversion is not promised
// to keep it either.
__device__ __forceinline__ uint8_t ScaledFp8(float x, bool negative, float f, bool divide) {
  if (isnan(x)) return negative ? uint8_t{0xFF} : uint8_t{0x7F};
  return FloatToFp8(divide ? __fdiv_rn(x, f) : __fmul_rn(x, f));
}
// The sign bit of element i of an f32 / f16 / bf16 array, from its bits.
__device__ __forceinline__ bool SignBitOf(int t, const void* p, int64_t i) {
  if (t == kF32) return (static_cast<const uint32_t*>(p)[i] >> 31) != 0;
  return (static_cast<const uint16_t*>(p)[i] >> 15) != 0;
}

// 16 bytes that the grid reads once (streamed weights), loaded without allocating in L1, so L1
// keeps the activations that every block of a weight-streaming kernel re-reads. p 16-byte aligned.
__device__ __forceinline__ int4 LoadStreamed16(const void* p) {
  int4 v;
  asm("ld.global.nc.L1::no_allocate.v4.s32 {%0, %1, %2, %3}, [%4];"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p));
  return v;
}

inline Status CudaStatus(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return Status::Ok();
  return Internal(std::string("cuda: ") + what + ": " + cudaGetErrorString(e));
}
#define LOWBIT_CUDA_RETURN(expr, what) LOWBIT_KRETURN_IF_ERROR(::lowbit::kernels::cuda::CudaStatus((expr), what))

inline int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ---- split-K weight streaming (the M ≤ 16 GEMVs at M ≥ min_m) ----
// A block owns a tile of weight rows over a slice of K, so it reads only its slice of the
// activation, once for the whole tile. With several slices each block writes its partial sums;
// the last block of a tile to arrive (LastSliceBlock) adds the slices in order 0, 1, … and
// writes Y — the same bits whichever block comes last.

// Weight rows per block of the M ≤ 16 GEMVs, unsplit and split-K (the launchers' grids, the
// backend's path names).
constexpr int kGemv8Rows = 8, kGemv8SplitRows = 64;      // W8A8, FP8
constexpr int kGemvW4Rows = 16, kGemvW4SplitRows = 128;  // W4A16

// The backend's scratch for it. One launch at a time may use it (the backend's calls run in turn
// on its stream).
struct GemvSplitWork {
  void* part = nullptr;  // partial sums (int32 or f32): nothing else in use during the call
  size_t part_bytes = 0;
  unsigned* tickets = nullptr;  // one per row tile, zeroed at allocation; every launch leaves them zero
  int64_t ticket_count = 0;
  int sms = 0;        // the device's SM count
  int64_t min_m = 5;  // split for M ≥ min_m (17: never)
};

struct GemvSplitPlan {
  int64_t tiles = 0, slices = 0, slice_steps = 0;  // slices = 0: do not split (the caller's other kernel)
};
// Tiles of `rows` weight rows; K in steps of `step` codes; `per_sm` blocks fit an SM (`slots`
// on the GPU). When the tiles fit one wave, as many slices as keep it one wave (rounded down: a
// partial second wave of latency-bound blocks would cost a whole one); when they do not, the
// fewest slices whose waves are ≥ 90% full (a gate_up of 448 tiles on 396 slots is 1.13 waves
// unsplit, 4.5 → 5 waves at 4 slices). At most 16 slices, each non-empty; `acc_bytes` per
// partial sum.
inline GemvSplitPlan PlanGemvSplit(const GemvSplitWork* work, int64_t rows, int64_t step, int per_sm, size_t acc_bytes,
                                   int64_t m, int64_t n, int64_t k) {
  GemvSplitPlan p;
  const int64_t slots = static_cast<int64_t>(per_sm) * (work ? work->sms : 0);
  if (work == nullptr || m < work->min_m || n < 1 || k < 1 || slots < 1) return p;
  const int64_t tiles = CeilDiv(n, rows), steps = CeilDiv(k, step);
  int64_t slices = 16;
  if (tiles <= slots) {
    slices = slots / tiles;
  } else {
    for (int64_t s = 1; s <= 16; ++s)
      if (tiles * s * 10 >= CeilDiv(tiles * s, slots) * slots * 9) {
        slices = s;
        break;
      }
  }
  if (slices > 16) slices = 16;
  if (slices > steps) slices = steps;
  const int64_t slice_steps = CeilDiv(steps, slices);
  slices = CeilDiv(steps, slice_steps);
  if (slices > 1 &&
      (tiles > work->ticket_count || static_cast<size_t>(slices * m * tiles * rows) * acc_bytes > work->part_bytes))
    return p;
  p.tiles = tiles, p.slices = slices, p.slice_steps = slice_steps;
  return p;
}

// Called by every thread of a block after it stored its partial sums: true in the block of row
// tile `tile` that arrives last, to which every slice's partials are then visible (read them with
// __ldcg). That block resets the tile's ticket for the next launch.
__device__ __forceinline__ bool LastSliceBlock(unsigned* tickets, unsigned tile, int slices) {
  __shared__ int last;
  __threadfence();  // this thread's partials visible device-wide before the block takes its ticket
  __syncthreads();
  // atomicInc wraps to 0 after slices − 1: the last block's ticket resets the counter for the next
  // launch.
  if (threadIdx.x == 0) last = atomicInc(tickets + tile, static_cast<unsigned>(slices - 1)) == slices - 1u;
  __syncthreads();
  if (last) __threadfence();
  return last;
}

// A lane's partial sums for kTiles mma n-tiles of 8 columns, as the mma leaves them: c[t][0],
// c[t][1] for token g = lane / 4 at columns col[t], col[t] + 1 (col[t] even), c[t][2], c[t][3]
// for token g + 8. part is [slices][M][ld] with every column of the padded tiles in bounds; tokens
// ≥ M are neither stored nor read. Pairs of columns move as one 8-byte access.
template <class Acc>
using AccPair = std::conditional_t<std::is_same_v<Acc, float>, float2, int2>;

// Stores this block's slice (blockIdx.y) of the partial sums.
template <class Acc, int kTiles>
__device__ __forceinline__ void StoreSlicePartials(Acc* part, int64_t ld, int64_t m, const int64_t (&col)[kTiles],
                                                   const Acc (&c)[kTiles][4]) {
  const int g = (threadIdx.x & 31) >> 2;
#pragma unroll
  for (int t = 0; t < kTiles; ++t)
#pragma unroll
    for (int h = 0; h < 2; ++h)
      if (g + 8 * h < m)
        __stcg(reinterpret_cast<AccPair<Acc>*>(part + (blockIdx.y * m + g + 8 * h) * ld + col[t]),
               AccPair<Acc>{c[t][2 * h], c[t][2 * h + 1]});
}

// In a tile's last block (LastSliceBlock): c becomes the sums over every slice, each output's
// added in slice order 0, 1, … Slice-major, so up to 4 · 2 · kTiles loads are in flight per
// thread (this block is on the kernel's critical path).
template <class Acc, int kTiles>
__device__ __forceinline__ void SumSlicePartials(const Acc* part, int64_t ld, int64_t m, int slices,
                                                 const int64_t (&col)[kTiles], Acc (&c)[kTiles][4]) {
  const int g = (threadIdx.x & 31) >> 2;
  Acc sum[kTiles][4] = {};
#pragma unroll 4
  for (int s = 0; s < slices; ++s)
#pragma unroll
    for (int t = 0; t < kTiles; ++t)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        if (g + 8 * h >= m) continue;
        const AccPair<Acc> p = __ldcg(reinterpret_cast<const AccPair<Acc>*>(part + (s * m + g + 8 * h) * ld + col[t]));
        sum[t][2 * h] += p.x;
        sum[t][2 * h + 1] += p.y;
      }
#pragma unroll
  for (int t = 0; t < kTiles; ++t)
#pragma unroll
    for (int i = 0; i < 4; ++i) c[t][i] = sum[t][i];
}

// ---- launchers (host functions; every one enqueues on `stream` and returns launch errors) ----

// Activation quantization; one block per row.
Status LaunchQuantInt8PerToken(int xt, const void* x, int64_t m, int64_t k, int8_t* q, float* scale, cudaStream_t s);
Status LaunchQuantFp8(int xt, const void* x, int64_t m, int64_t k, const float* static_scale_or_null,
                      float static_scale, uint8_t* q, float* scale_out, cudaStream_t s);

// W8A8: int8 [M,K] × int8 [N,K]ᵀ with dp4a, int32 accumulation, fused scale/bias epilogue.
// K % 4 == 0.
Status LaunchGemmW8A8(const int8_t* x, const float* x_scale, int64_t x_scale_count, const int8_t* w,
                      const float* w_scale, int64_t w_scale_count, const float* bias, int64_t m, int64_t n, int64_t k,
                      int yt, void* y, cudaStream_t s);
// W8A8 weight streaming for M ≤ kW8A8GemvMaxM on the int8 tensor cores (sm_80+); K % 16 == 0,
// 16-byte aligned x and w. Same epilogue and bits as LaunchGemmW8A8 (int32 sums are exact in any
// order). With `split` (may be null) and M ≥ split->min_m, 64 weight rows per block and K split
// across blocks; *slices_used is then the number of K slices, else 0.
constexpr int64_t kW8A8GemvMaxM = 16;
Status LaunchGemvW8A8(const int8_t* x, const float* x_scale, int64_t x_scale_count, const int8_t* w,
                      const float* w_scale, int64_t w_scale_count, const float* bias, int64_t m, int64_t n, int64_t k,
                      int yt, void* y, const GemvSplitWork* split, int64_t* slices_used, cudaStream_t s);
// FP8 weight streaming for M ≤ 16 on the e4m3 tensor cores (sm_89+), the same kernels as
// LaunchGemvW8A8 with f32 accumulators; the epilogue of the simple FP8 kernel.
Status LaunchGemvFp8(const uint8_t* x, const float* x_scale, int64_t x_scale_count, const uint8_t* w,
                     const float* w_scale, int64_t w_scale_count, const float* bias, int64_t m, int64_t n, int64_t k,
                     int yt, void* y, const GemvSplitWork* split, int64_t* slices_used, cudaStream_t s);
// The same epilogue on int32 accumulators computed elsewhere (cuBLASLt): rows [row0, row0 + rows)
// of Y from acc[rows, N] (row-major); x_scale is indexed by the global row.
Status LaunchW8A8Epilogue(const int32_t* acc, int64_t row0, int64_t rows, const float* x_scale, int64_t x_scale_count,
                          const float* w_scale, int64_t w_scale_count, const float* bias, int64_t n, int yt, void* y,
                          cudaStream_t s);

// Simple tiled f32-accumulating GEMM used by FP8 and W4A16 when no library path applies.
struct W4Dev {
  const int32_t* packed;  // [N, K/8]: q = code − 8 as signed nibbles (int4b_t), kernel (permuted) column order
  const float* scale;     // [N, G]
  const float* zero;      // [N, G] or null
  int64_t groups, group_size;
};
Status LaunchGemmFp8Simple(const uint8_t* x, const float* x_scale, int64_t x_scale_count, const uint8_t* w,
                           const float* w_scale, int64_t w_scale_count, const float* bias, int64_t m, int64_t n,
                           int64_t k, int yt, void* y, cudaStream_t s);
Status LaunchGemmW4Simple(int xt, const void* x, const W4Dev& w, const float* bias, int64_t m, int64_t n, int64_t k,
                          void* y, cudaStream_t s);
// W4A16 weight-streaming GEMV-style kernel for M ≤ 16.
Status LaunchGemvW4(int xt, const void* x, const W4Dev& w, const float* bias, int64_t m, int64_t n, int64_t k, void* y,
                    cudaStream_t s);
// The same on the tensor cores (mma.sync, sm_80+): M ≤ 16, K % 32 == 0, f16/bf16, 16-byte
// aligned x. scales_exact: every scale is a value of the activation type (then symmetric weights
// are dequantized in packed f16/bf16 arithmetic, with the same results). With `split` (may be
// null) and M ≥ split->min_m, 128 weight rows per block and K split across blocks (the activation
// read once per 128 rows, not per 16); *slices_used is then the number of K slices, else 0.
Status LaunchGemvW4Mma(int xt, const void* x, const W4Dev& w, const float* bias, int64_t m, int64_t n, int64_t k,
                       void* y, bool scales_exact, const GemvSplitWork* split, int64_t* slices_used, cudaStream_t s);
// Whether LaunchGemvW4Mma dequantizes in packed f16/bf16 arithmetic: symmetric weights, exact scales.
inline bool GemvW4MmaPacked(const W4Dev& w, bool scales_exact) { return scales_exact && w.zero == nullptr; }
// W4A16 large M: dequantize to the activation type (rounded), then cuBLAS; the epilogue adds bias.
// out: 16-byte aligned, f16 / bf16 (xt).
Status LaunchDequantW4(int xt, const W4Dev& w, int64_t n, int64_t k, void* out, cudaStream_t s);
Status LaunchBiasRound(const float* c, const float* bias, int64_t m, int64_t n, int yt, void* y, cudaStream_t s);
// Gathers activation columns: out[m, j] = x[m, perm[j]] (16-bit types).
Status LaunchPermuteColumns(const void* x, const int32_t* perm, int64_t m, int64_t k, void* out, cudaStream_t s);
// p[i] = *src for i < n (broadcast a device scalar).
Status LaunchBroadcast(float* p, const float* src, int64_t n, cudaStream_t s);

}  // namespace lowbit::kernels::cuda

#endif  // LOWBIT_KERNELS_CUDA_COMMON_CUH_
