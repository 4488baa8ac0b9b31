// W8A8 on Hopper, M ≤ kW8A8SmallMaxM: the 64×128 tile instantiations (see gemm_w8a8_sm90.cuh).
#include "kernels/cuda/gemm_w8a8_sm90.cuh"

namespace lowbit::kernels::cuda::sm90 {

Status GemmW8A8Small(const W8A8Sm90Args& a, bool y_is_bf16, cudaStream_t stream) {
  return y_is_bf16 ? W8A8SmallM<cutlass::bfloat16_t>::Run(a, stream) : W8A8SmallM<cutlass::half_t>::Run(a, stream);
}

}  // namespace lowbit::kernels::cuda::sm90
