// Activation quantization kernels: one 256-thread block per row; the row max is a block
// reduction; x / scale is an IEEE division (__fdiv_rn), conversions round to nearest even and
// saturate — the same f32 operations as the CPU reference, so codes and scales are bit-exact.
#include "kernels/cuda/common.cuh"

namespace lowbit::kernels::cuda {
namespace {

constexpr int kThreads = 256;

__device__ float BlockMax(float v) {
  __shared__ float red[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  if ((threadIdx.x & 31) == 0) red[threadIdx.x / 32] = v;
  __syncthreads();
  if (threadIdx.x < 32) {
    v = threadIdx.x < kThreads / 32 ? red[threadIdx.x] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    if (threadIdx.x == 0) red[0] = v;
  }
  __syncthreads();
  float r = red[0];
  __syncthreads();
  return r;
}

__global__ void QuantInt8PerTokenKernel(int xt, const void* x, int64_t k, int8_t* q, float* scale) {
  const int64_t row = blockIdx.x;
  float mx = 0.0f;
  for (int64_t c = threadIdx.x; c < k; c += kThreads) mx = fmaxf(mx, fabsf(LoadElem(xt, x, row * k + c)));
  const float absmax = BlockMax(mx);
  const float s = absmax > 0.0f ? __fdiv_rn(absmax, 127.0f) : 1.0f;
  if (threadIdx.x == 0) scale[row] = s;
  for (int64_t c = threadIdx.x; c < k; c += kThreads) {
    float v = __fdiv_rn(LoadElem(xt, x, row * k + c), s);
    v = fminf(fmaxf(v, -128.0f), 127.0f);
    q[row * k + c] = static_cast<int8_t>(__float2int_rn(v));
  }
}

__global__ void QuantFp8Kernel(int xt, const void* x, int64_t k, float static_scale, uint8_t* q, float* scale_out) {
  const int64_t row = blockIdx.x;
  float s = static_scale;
  if (scale_out != nullptr) {  // dynamic per token
    float mx = 0.0f;
    for (int64_t c = threadIdx.x; c < k; c += kThreads) mx = fmaxf(mx, fabsf(LoadElem(xt, x, row * k + c)));
    const float absmax = BlockMax(mx);
    s = absmax > 0.0f ? __fdiv_rn(absmax, 448.0f) : 1.0f;
    if (threadIdx.x == 0) scale_out[row] = s;
  }
  for (int64_t c = threadIdx.x; c < k; c += kThreads) {
    float v = __fdiv_rn(LoadElem(xt, x, row * k + c), s);
    v = fminf(fmaxf(v, -448.0f), 448.0f);
    q[row * k + c] = FloatToFp8(v);
  }
}

}  // namespace

Status LaunchQuantInt8PerToken(int xt, const void* x, int64_t m, int64_t k, int8_t* q, float* scale, cudaStream_t s) {
  QuantInt8PerTokenKernel<<<static_cast<unsigned>(m), kThreads, 0, s>>>(xt, x, k, q, scale);
  return CudaStatus(cudaGetLastError(), "QuantizeInt8PerToken launch");
}

Status LaunchQuantFp8(int xt, const void* x, int64_t m, int64_t k, const float*, float static_scale, uint8_t* q,
                      float* scale_out, cudaStream_t s) {
  QuantFp8Kernel<<<static_cast<unsigned>(m), kThreads, 0, s>>>(xt, x, k, static_scale, q, scale_out);
  return CudaStatus(cudaGetLastError(), "QuantizeFp8 launch");
}

}  // namespace lowbit::kernels::cuda
