// W4A16 on Hopper, M ≤ kW4A16MidMaxM: the 64-token tile instantiations (gemm_w4a16_sm90.cuh).
#include "kernels/cuda/gemm_w4a16_sm90.cuh"

namespace lowbit::kernels::cuda::sm90 {

Status GemmW4A16Mid(const W4A16Sm90Args& a, bool bf16, cudaStream_t stream) {
  return bf16 ? W4A16Gemm<cutlass::bfloat16_t, 64>::Run(a, stream) : W4A16Gemm<cutlass::half_t, 64>::Run(a, stream);
}

}  // namespace lowbit::kernels::cuda::sm90
