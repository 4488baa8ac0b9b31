// W4A16 kernels. Dequantized weight: W'[n,k] = round_act((code − 8 − z[n,g]) · s[n,g]), g = k / gs
// in the kernel's (act-order-permuted) column order; accumulation in f32.
//   * GemvW4Kernel (M ≤ 16): weight streaming — one warp per output column, each lane reads
//     packed int32 words (8 codes), dequantizes and multiplies with every activation row.
//   * GemmW4SimpleKernel: a plain tiled kernel (64×64 tiles, f32 FMA) for any M ("cuda-simple").
//   * DequantW4Kernel + cuBLAS (large M, "cuda"): W' materialized in the activation dtype in
//     the workspace, then cublasGemmEx with f32 accumulation into f32, then bias + rounding.
// Needs K % 8 == 0 and a group size that is a multiple of 8 (a packed word never straddles
// two groups).
#include "kernels/cuda/common.cuh"

namespace lowbit::kernels::cuda {
namespace {

__device__ __forceinline__ float DequantOne(const W4Dev& w, int xt, int64_t nn, int64_t kk, int64_t words) {
  const uint32_t word = static_cast<uint32_t>(w.packed[nn * words + kk / 8]);
  const int code = static_cast<int>((word >> (4 * (kk % 8))) & 15u);
  const int64_t g = kk / w.group_size;
  const float z = w.zero ? w.zero[nn * w.groups + g] : 0.0f;
  return RoundTo(xt, __fmul_rn(__fsub_rn(static_cast<float>(code - 8), z), w.scale[nn * w.groups + g]));
}

constexpr int kMaxGemvM = 16;

__global__ void __launch_bounds__(256) GemvW4Kernel(int xt, const void* __restrict__ x, W4Dev w,
                                                    const float* __restrict__ bias, int64_t m, int64_t n, int64_t k,
                                                    void* y) {
  const int lane = threadIdx.x & 31;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * 8 + threadIdx.x / 32;
  if (col >= n) return;
  const int64_t words = k / 8;
  float acc[kMaxGemvM];
#pragma unroll
  for (int i = 0; i < kMaxGemvM; ++i) acc[i] = 0.0f;
  for (int64_t wi = lane; wi < words; wi += 32) {
    const uint32_t word = static_cast<uint32_t>(w.packed[col * words + wi]);
    const int64_t g = (wi * 8) / w.group_size;
    const float s = w.scale[col * w.groups + g];
    const float z = w.zero ? w.zero[col * w.groups + g] : 0.0f;
    float wv[8];
#pragma unroll
    for (int j = 0; j < 8; ++j)
      wv[j] = RoundTo(xt, __fmul_rn(__fsub_rn(static_cast<float>(static_cast<int>((word >> (4 * j)) & 15u) - 8), z), s));
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

__global__ void DequantW4Kernel(int xt, W4Dev w, int64_t n, int64_t k, void* out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n * k) return;
  StoreElem(xt, out, i, DequantOne(w, xt, i / k, i % k, k / 8));
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

}  // namespace

Status LaunchGemvW4(int xt, const void* x, const W4Dev& w, const float* bias, int64_t m, int64_t n, int64_t k, void* y,
                    cudaStream_t s) {
  if (m > kMaxGemvM) return Internal("LaunchGemvW4: M > 16");
  GemvW4Kernel<<<Blocks(n, 8), 256, 0, s>>>(xt, x, w, bias, m, n, k, y);
  return CudaStatus(cudaGetLastError(), "GemvW4 launch");
}

Status LaunchGemmW4Simple(int xt, const void* x, const W4Dev& w, const float* bias, int64_t m, int64_t n, int64_t k,
                          void* y, cudaStream_t s) {
  dim3 grid(Blocks(n, kBN), Blocks(m, kBM));
  if (grid.y > 65535) return InvalidArgument("GemmW4A16 (cuda): M = " + std::to_string(m) + " exceeds 65535·64");
  TiledKernel<<<grid, 256, 0, s>>>(ActLoad{xt, x, k}, W4Load{w, xt, k / 8}, BiasEpi{bias, xt, y, n}, m, n, k);
  return CudaStatus(cudaGetLastError(), "GemmW4Simple launch");
}

Status LaunchDequantW4(int xt, const W4Dev& w, int64_t n, int64_t k, void* out, cudaStream_t s) {
  DequantW4Kernel<<<Blocks(n * k, 256), 256, 0, s>>>(xt, w, n, k, out);
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
