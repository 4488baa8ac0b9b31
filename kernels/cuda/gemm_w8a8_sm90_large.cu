// W8A8 on Hopper, M > kW8A8SmallMaxM: the 128×128 tile, 2×1 cluster instantiations (see
// gemm_w8a8_sm90.cuh), and the dispatch by M.
#include "kernels/cuda/gemm_w8a8_sm90.cuh"

namespace lowbit::kernels::cuda::sm90 {

Status GemmW8A8Small(const W8A8Sm90Args& a, bool y_is_bf16, cudaStream_t stream);  // gemm_w8a8_sm90_small.cu

Status GemmW8A8(const W8A8Sm90Args& a, bool y_is_bf16, cudaStream_t stream) {
  if (a.m <= kW8A8SmallMaxM) return GemmW8A8Small(a, y_is_bf16, stream);
  return y_is_bf16 ? W8A8LargeM<cutlass::bfloat16_t>::Run(a, stream) : W8A8LargeM<cutlass::half_t>::Run(a, stream);
}

}  // namespace lowbit::kernels::cuda::sm90
