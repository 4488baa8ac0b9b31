// The tail every CUTLASS GEMM call shares (gemm_scaled_sm90.cuh, gemm_w4a16_sm90.cu): ask the
// kernel whether it takes the problem, check the workspace, initialize and launch on `stream`.
#ifndef LOWBIT_KERNELS_CUDA_CUTLASS_LAUNCH_CUH_
#define LOWBIT_KERNELS_CUDA_CUTLASS_LAUNCH_CUH_

#include <cuda_runtime.h>
#include <cutlass/cutlass.h>

#include <string>

#include "kernels/status.h"

namespace lowbit::kernels::cuda::sm90 {

// `what` names the GEMM ("W8A8 sm90"); `problem()` describes its shape, called only for the error;
// a problem the kernel refuses, or a launch the device refuses, returns kUnimplemented with
// nothing enqueued (the caller takes another path).
template <class Gemm, class Problem>
Status LaunchCutlassGemm(const char* what, Problem problem, const typename Gemm::Arguments& args, void* workspace,
                         size_t workspace_bytes, cudaStream_t stream) {
  Gemm gemm;
  if (gemm.can_implement(args) != cutlass::Status::kSuccess)
    return Unimplemented(std::string(what) + ": CUTLASS cannot run " + problem());
  const size_t need = Gemm::get_workspace_size(args);
  if (need > workspace_bytes)
    return Internal(std::string(what) + ": CUTLASS needs " + std::to_string(need) + " bytes of workspace");
  cutlass::Status st = gemm.initialize(args, workspace, stream);
  if (st == cutlass::Status::kSuccess) st = gemm.run(stream);
  if (st != cutlass::Status::kSuccess) {
    // A launch the device refused (e.g. a 1x8 cluster's shared memory on a MIG slice) enqueued
    // nothing: kUnimplemented, so the caller takes its cuBLASLt / plain path. CUTLASS's run()
    // has already read and cleared the CUDA error; its own status string is what is left.
    (void)cudaGetLastError();
    return Unimplemented(std::string(what) + ": CUTLASS could not launch " + problem() + ": " +
                         cutlassGetStatusString(st));
  }
  return Status::Ok();
}

}  // namespace lowbit::kernels::cuda::sm90

#endif  // LOWBIT_KERNELS_CUDA_CUTLASS_LAUNCH_CUH_
