// W8A8-INT8 GEMM: Y[m,n] = ((float)Σ_k X[m,k]·W[n,k] · w_scale[n]) · x_scale[m] + bias[n].
// A plain shared-memory tiled kernel (64×64 tile, 32-byte K step, 4×4 outputs per thread) with
// __dp4a and int32 accumulators; the epilogue uses explicitly rounded f32 operations (no FMA
// contraction), so the output is bit-identical to the CPU reference. Needs K % 4 == 0 (dword
// loads). The backend prefers cuBLASLt's int8 tensor cores for the accumulators where it has an
// algorithm (gemm_cublaslt.cu) and runs the same epilogue on them (W8A8EpilogueKernel).
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

__global__ void __launch_bounds__(256) GemmW8A8Kernel(const int8_t* __restrict__ x, const float* __restrict__ x_scale,
                                                      int64_t x_scale_count, const int8_t* __restrict__ w,
                                                      const float* __restrict__ w_scale, int64_t w_scale_count,
                                                      const float* __restrict__ bias, int64_t m, int64_t n, int64_t k,
                                                      int yt, void* y) {
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

Status LaunchGemmW8A8(const int8_t* x, const float* x_scale, int64_t x_scale_count, const int8_t* w,
                      const float* w_scale, int64_t w_scale_count, const float* bias, int64_t m, int64_t n, int64_t k,
                      int yt, void* y, cudaStream_t s) {
  dim3 grid(static_cast<unsigned>(CeilDiv(n, kBN)), static_cast<unsigned>(CeilDiv(m, kBM)));
  if (grid.y > 65535) return InvalidArgument("GemmW8A8 (cuda): M = " + std::to_string(m) + " exceeds 65535·64");
  GemmW8A8Kernel<<<grid, 256, 0, s>>>(x, x_scale, x_scale_count, w, w_scale, w_scale_count, bias, m, n, k, yt, y);
  return CudaStatus(cudaGetLastError(), "GemmW8A8 launch");
}

}  // namespace lowbit::kernels::cuda
