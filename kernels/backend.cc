#include "kernels/backend.h"

#include "kernels/cpu/cpu_backend.h"
#ifdef LOWBIT_KERNELS_HAVE_CUDA
#include "kernels/cuda/cuda_backend.h"
#endif

namespace lowbit::kernels {

bool CudaAvailable() {
#ifdef LOWBIT_KERNELS_HAVE_CUDA
  return CudaDeviceCount() > 0;
#else
  return false;
#endif
}

std::vector<std::string> BackendNames() {
  std::vector<std::string> names = {"cpu", "cpu-avx2", "cpu-generic", "cpu-ref"};
#ifdef LOWBIT_KERNELS_HAVE_CUDA
  names.push_back("cuda");
  names.push_back("cuda-simple");
#endif
  names.push_back("auto");
  return names;
}

Status MakeBackend(std::string_view name, const BackendOptions& options, std::unique_ptr<Backend>* out) {
  if (name == "auto") name = CudaAvailable() ? "cuda" : "cpu";
  if (name == "cpu-avx2" && !CpuHasAvx2Kernels())
    return Unavailable("backend 'cpu-avx2': this CPU lacks AVX2, FMA or F16C (use 'cpu', which picks the best "
                       "micro-kernels the CPU has)");
  if (name == "cpu" || name == "cpu-avx2" || name == "cpu-generic" || name == "cpu-ref") {
    *out = MakeCpuBackend(name, options);
    return Status::Ok();
  }
  if (name == "cuda" || name == "cuda-simple") {
#ifdef LOWBIT_KERNELS_HAVE_CUDA
    if (CudaDeviceCount() == 0) return Unavailable("backend '" + std::string(name) + "': no CUDA device is visible");
    return MakeCudaBackend(options, name == "cuda-simple", out);
#else
    return Unavailable("backend 'cuda': this build has no CUDA (configure with LOWBIT_CUDA=ON and nvcc)");
#endif
  }
  std::string known;
  for (const auto& n : BackendNames()) known += (known.empty() ? "" : ", ") + n;
  return InvalidArgument("unknown backend '" + std::string(name) + "' (known: " + known + ")");
}

}  // namespace lowbit::kernels
