// FP8-E4M3 on Hopper (gemm_scaled_sm90.cuh): the 64×128 and 128×128 tile configurations and the
// dispatch by M.
#include "kernels/cuda/gemm_scaled_sm90.cuh"

namespace lowbit::kernels::cuda::sm90 {

Status GemmFp8Tiny(const ScaledSm90Args& a, bool y_is_bf16, cudaStream_t stream);  // gemm_fp8_sm90_tiny.cu

Status GemmFp8(const ScaledSm90Args& a, bool y_is_bf16, cudaStream_t stream) {
  if (a.m <= kScaledTinyMaxM) return GemmFp8Tiny(a, y_is_bf16, stream);
  if (a.m <= kScaledSmallMaxM) return RunScaled<cutlass::float_e4m3_t, SmallM>("FP8 sm90", a, y_is_bf16, stream);
  return RunScaled<cutlass::float_e4m3_t, LargeMCooperative>("FP8 sm90", a, y_is_bf16, stream);
}

}  // namespace lowbit::kernels::cuda::sm90
