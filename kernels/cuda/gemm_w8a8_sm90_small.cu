// W8A8 on Hopper, kScaledTinyMaxM < M ≤ kScaledSmallMaxM: the 64×128 tile instantiations (gemm_scaled_sm90.cuh).
#include "kernels/cuda/gemm_scaled_sm90.cuh"

namespace lowbit::kernels::cuda::sm90 {

Status GemmW8A8Small(const ScaledSm90Args& a, bool y_is_bf16, cudaStream_t stream) {
  return RunScaled<int8_t, SmallM>("W8A8 sm90", a, y_is_bf16, stream);
}

}  // namespace lowbit::kernels::cuda::sm90
