// W8A8 on Hopper, M > kScaledSmallMaxM: the 128×128 tile, 2×1 cluster instantiations
// (gemm_scaled_sm90.cuh), and the dispatch by M.
#include "kernels/cuda/gemm_scaled_sm90.cuh"

namespace lowbit::kernels::cuda::sm90 {

Status GemmW8A8Tiny(const ScaledSm90Args& a, bool y_is_bf16, cudaStream_t stream);   // gemm_w8a8_sm90_tiny.cu
Status GemmW8A8Small(const ScaledSm90Args& a, bool y_is_bf16, cudaStream_t stream);  // gemm_w8a8_sm90_small.cu

Status GemmW8A8(const ScaledSm90Args& a, bool y_is_bf16, cudaStream_t stream) {
  if (a.m <= kScaledTinyMaxM) return GemmW8A8Tiny(a, y_is_bf16, stream);
  if (a.m <= kScaledSmallMaxM) return GemmW8A8Small(a, y_is_bf16, stream);
  return RunScaled<int8_t, LargeM>("W8A8 sm90", a, y_is_bf16, stream);
}

}  // namespace lowbit::kernels::cuda::sm90
