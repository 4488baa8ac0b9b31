// W4A16 on Hopper (gemm_w4a16_sm90.cuh): the 128-token tile instantiations, the shape check and
// the dispatch by M.
#include "kernels/cuda/gemm_w4a16_sm90.cuh"

namespace lowbit::kernels::cuda::sm90 {

Status GemmW4A16Mid(const W4A16Sm90Args& a, bool bf16, cudaStream_t stream);  // gemm_w4a16_sm90_mid.cu

bool W4A16Supported(int64_t n, int64_t k, int64_t group_size) {
  return k % 64 == 0 && n % 8 == 0 && (group_size == k || group_size % 64 == 0);
}

Status GemmW4A16(const W4A16Sm90Args& a, bool bf16, cudaStream_t stream) {
  if (a.m <= kW4A16MidMaxM) return GemmW4A16Mid(a, bf16, stream);
  return bf16 ? W4A16Gemm<cutlass::bfloat16_t, 128>::Run(a, stream) : W4A16Gemm<cutlass::half_t, 128>::Run(a, stream);
}

}  // namespace lowbit::kernels::cuda::sm90
