// W8A8 on Hopper, M ≤ kScaledTinyMaxM: the 64×64 tile, 1×8 cluster instantiations
// (gemm_scaled_sm90.cuh).
#include "kernels/cuda/gemm_scaled_sm90.cuh"

namespace lowbit::kernels::cuda::sm90 {

Status GemmW8A8Tiny(const ScaledSm90Args& a, bool y_is_bf16, cudaStream_t stream) {
  return RunScaled<int8_t, TinyM>("W8A8 sm90", a, y_is_bf16, stream);
}

}  // namespace lowbit::kernels::cuda::sm90
