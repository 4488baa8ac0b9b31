// FP8-E4M3 on Hopper, M ≤ kScaledTinyMaxM: the 64×64 tile, 1×8 cluster instantiations
// (gemm_scaled_sm90.cuh).
#include "kernels/cuda/gemm_scaled_sm90.cuh"

namespace lowbit::kernels::cuda::sm90 {

Status GemmFp8Tiny(const ScaledSm90Args& a, bool y_is_bf16, cudaStream_t stream) {
  return RunScaled<cutlass::float_e4m3_t, TinyM>("FP8 sm90", a, y_is_bf16, stream);
}

}  // namespace lowbit::kernels::cuda::sm90
