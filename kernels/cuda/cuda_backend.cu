// The CUDA backend: memory, streams, the workspace arena, weight preparation and dispatch.
// Plain kernels (quantize.cu, gemm_w8a8.cu, gemm_w4a16.cu); tensor-core paths: W8A8, FP8 and W4A16
// weight streaming with mma.sync at M ≤ 16, and at M > 16 on sm_90 CUTLASS wgmma kernels
// (gemm_sm90.h: W8A8 / FP8 with the scales fused into the epilogue, W4A16 mixed-input); library
// paths where those do not apply (cuBLASLt int8 accumulators + a scale kernel for W8A8, cuBLASLt
// FP8, dequantize + cuBLAS for W4A16). "cuda-simple" runs only the plain kernels, so they can be
// checked on their own. Nothing here has run on a GPU yet.
#include <cublasLt.h>
#include <cublas_v2.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cublaslt_gemm.h"
#include "kernels/cuda/cuda_backend.h"
#if LOWBIT_KERNELS_HAVE_CUTLASS
#include "kernels/cuda/gemm_sm90.h"
#endif
#include "kernels/validate.h"

namespace lowbit::kernels {

int CudaDeviceCount() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}

namespace {

using namespace ::lowbit::kernels::cuda;

constexpr size_t kLtWorkspace = 32u << 20;
constexpr int64_t kGemvMaxM = 16;
// The largest M (Requirements()): the simple kernels' grids put 64 rows per block.y, ≤ 65535.
constexpr int64_t kMaxM = int64_t{65535} * 64;
// W4A16 workspace rows reserved at PrepareInt4 (a GEMM processes M in chunks of the rows that fit).
constexpr int64_t kW4MinChunkRows = 256;
// Tickets of the split-K GEMVs, one per row tile (a 128K-row layer in 64-row tiles: 2004; a
// layer with more tiles takes the unsplit kernel).
constexpr int64_t kGemvTickets = 4096;

size_t Align256(size_t b) { return (b + 255) / 256 * 256; }
bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// LOWBIT_CUDA_NO_CUTLASS=1 turns the CUTLASS Hopper kernels off (W8A8 / FP8 then take cuBLASLt,
// W4A16 dequantize + cuBLAS), to compare the paths on one machine.
bool EnvFlag(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' && std::strcmp(v, "0") != 0;
}
[[maybe_unused]] bool CutlassDisabled() { return EnvFlag("LOWBIT_CUDA_NO_CUTLASS"); }  // unused without CUTLASS
// LOWBIT_CUDA_GEMV_SPLIT_MIN_M=m (1…17): the smallest M that takes the split-K GEMVs (W8A8, FP8,
// W4A16; 17: none), to compare them with the unsplit ones on one machine.
int64_t GemvSplitMinM() {
  constexpr int64_t kDefault = 5;
  const char* v = std::getenv("LOWBIT_CUDA_GEMV_SPLIT_MIN_M");
  if (v == nullptr || *v == '\0') return kDefault;
  char* end = nullptr;
  const long m = std::strtol(v, &end, 10);
  if (*end == '\0' && m >= 1 && m <= 17) return m;
  std::fprintf(stderr, "lowbit cuda: LOWBIT_CUDA_GEMV_SPLIT_MIN_M=%s is not an integer in 1…17; using %lld\n", v,
               static_cast<long long>(kDefault));
  return kDefault;
}

// LOWBIT_CUDA_TRACE=1: each GEMM path taken is printed to stderr once per (op, M, N, K, path) —
// which kernel ran, without a profiler (fallbacks are otherwise silent).
class PathTrace {
 public:
  PathTrace() : on_(EnvFlag("LOWBIT_CUDA_TRACE")) {}
  // Whether tracing is on: callers skip building a path name nobody reads.
  bool on() const { return on_; }
  void Note(const std::string& backend, const char* op, int64_t m, int64_t n, int64_t k, const char* path) {
    if (!on_) return;
    // A benchmark repeats one call: skip the string and the lock when this thread's last note was it.
    thread_local struct {
      const void* self;
      const char* op;
      int64_t m, n, k;
      size_t path;
    } last{};
    const size_t path_hash = std::hash<std::string_view>{}(path);
    if (last.self == this && last.op == op && last.m == m && last.n == n && last.k == k && last.path == path_hash)
      return;
    last = {this, op, m, n, k, path_hash};
    std::string key = backend + " " + op + " M=" + std::to_string(m) + " N=" + std::to_string(n) +
                      " K=" + std::to_string(k) + " -> " + path;
    std::lock_guard<std::mutex> lock(mu_);
    if (seen_.insert(key).second) std::fprintf(stderr, "lowbit cuda path: %s\n", key.c_str());
  }

 private:
  bool on_;
  std::mutex mu_;
  std::set<std::string> seen_;
};

std::string S(int64_t v) { return std::to_string(v); }

// The trace name of a GEMV launch: the split-K kernel (`split_rows` per block, K in `slices`
// slices) or the unsplit one (`rows` per block).
std::string GemvPath(int64_t slices, int split_rows, int rows) {
  if (slices == 0) return "mma.sync GEMV " + S(rows) + " rows";
  return "mma.sync GEMV " + S(split_rows) + " rows, " + (slices > 1 ? "K in " + S(slices) + " slices" : "K whole");
}

#ifndef LOWBIT_CUDA_ARCHS
#define LOWBIT_CUDA_ARCHS "?"
#endif

// Does nothing: whether the build has code for a device is whether this kernel has (it is
// compiled with every plain kernel of the backend, for the same architectures).
__global__ void ImageProbeKernel() {}

// An error naming the fix when this build has no code for the device (e.g. built for sm_90a,
// run on an A100): without it every launch would fail with "no kernel image is available".
// `code_sm`: the architecture the code the device will run was compiled for (its __CUDA_ARCH__
// / 10), which can be below the device's: a build for "80;90a" runs its sm_80 code on an sm_89
// GPU, where the FP8 mma.sync instruction was compiled out (a trap).
Status CheckKernelImage(const std::string& backend, const cudaDeviceProp& prop, int* code_sm) {
  cudaFuncAttributes attr;
  const cudaError_t e = cudaFuncGetAttributes(&attr, ImageProbeKernel);
  if (e == cudaSuccess) {
    *code_sm = attr.ptxVersion;
    return Status::Ok();
  }
  (void)cudaGetLastError();
  const std::string sm = S(prop.major * 10 + prop.minor);
  return Unimplemented("backend '" + backend + "': this build has no GPU code for " + prop.name + " (sm_" + sm +
                       "): it was compiled for CUDA architectures " LOWBIT_CUDA_ARCHS
                       "; rebuild with "
                       "-DCMAKE_CUDA_ARCHITECTURES=\"" +
                       sm + ";90a\" (" + cudaGetErrorString(e) + ")");
}

// cudaFree whose failure is dropped: a recorded error must not surface later as the failure of
// the next launch (whose check reads cudaGetLastError).
void FreeQuietly(void* p) {
  if (p != nullptr && cudaFree(p) != cudaSuccess) (void)cudaGetLastError();
}

class CudaWeight : public PreparedWeight {
 public:
  CudaWeight(std::string backend, WeightKind kind, int64_t n, int64_t k)
      : PreparedWeight(std::move(backend), kind, n, k) {}
  ~CudaWeight() override {
    for (void* p : allocs) FreeQuietly(p);
  }
  void SetMeta(int64_t gs, bool per_channel, bool asym, bool act_order) {
    group_size_ = gs;
    per_channel_ = per_channel;
    asym_ = asym;
    act_order_ = act_order;
  }
  // Copies on `stream` and waits for it: a plain cudaMemcpy from pageable memory may return
  // before the data lands, unordered with a later kernel on a non-blocking stream.
  Status Upload(const void* host, size_t bytes, cudaStream_t stream, void** dev) {
    LOWBIT_CUDA_RETURN(cudaMalloc(dev, std::max<size_t>(bytes, 1)), "cudaMalloc (weight)");
    allocs.push_back(*dev);
    allocated += static_cast<int64_t>(std::max<size_t>(bytes, 1));
    LOWBIT_CUDA_RETURN(cudaMemcpyAsync(*dev, host, bytes, cudaMemcpyHostToDevice, stream), "copy (weight)");
    return CudaStatus(cudaStreamSynchronize(stream), "copy (weight) sync");
  }
  int64_t bytes() const override { return allocated; }
  std::vector<void*> allocs;
  int64_t allocated = 0;  // Σ sizes of allocs
  // int8 / fp8
  const void* w = nullptr;
  const float* scale = nullptr;      // [1] or [N]
  const float* scale_vec = nullptr;  // always [N] (fp8 outer-vector path)
  int64_t scale_count = 0;
  // int4
  W4Dev w4{};
  const int32_t* perm = nullptr;
  bool w4_scale_exact[2] = {false, false};         // every scale an f16, a bf16 value
  const void* w4_scale_t[2] = {nullptr, nullptr};  // [G, N] scales as f16, bf16 (CUTLASS W4A16), or null
};

class CudaBackend : public Backend {
 public:
  CudaBackend(std::string name, bool simple, int device) : name_(std::move(name)), simple_(simple), device_(device) {}
  ~CudaBackend() override {
    (void)cudaSetDevice(device_);
    lt_gemms_.reset();  // its plans before the handle
    FreeQuietly(arena_);
    FreeQuietly(lt_ws_);
    FreeQuietly(split_.tickets);
    if (lt_) cublasLtDestroy(lt_);
    if (blas_) cublasDestroy(blas_);
  }

  Status Init(size_t workspace_bytes) {
    LOWBIT_CUDA_RETURN(cudaSetDevice(device_), "cudaSetDevice");
    cudaDeviceProp prop;
    LOWBIT_CUDA_RETURN(cudaGetDeviceProperties(&prop, device_), "cudaGetDeviceProperties");
    sm_ = prop.major * 10 + prop.minor;
    int code_sm = 0;
    LOWBIT_KRETURN_IF_ERROR(CheckKernelImage(name_, prop, &code_sm));
    mma_sm_ = code_sm > 0 ? std::min(sm_, code_sm) : sm_;  // (0: not reported; the device's, as before)
#if LOWBIT_KERNELS_HAVE_CUTLASS
    use_cutlass_ = !simple_ && sm_ == 90 && !CutlassDisabled();
#endif
    if (cublasCreate(&blas_) != CUBLAS_STATUS_SUCCESS) return Internal("cublasCreate failed");
    if (cublasLtCreate(&lt_) != CUBLAS_STATUS_SUCCESS) return Internal("cublasLtCreate failed");
    LOWBIT_CUDA_RETURN(cudaMalloc(&lt_ws_, kLtWorkspace), "cudaMalloc (cuBLASLt workspace)");
    lt_gemms_ = std::make_unique<cuda::CublasLtGemms>(lt_, lt_ws_, kLtWorkspace);
    LOWBIT_KRETURN_IF_ERROR(UseBlasWorkspace());
    // The split-K GEMVs: their partial sums in the cuBLASLt workspace (calls on the stream run in
    // turn), their tickets zeroed once here.
    LOWBIT_CUDA_RETURN(cudaMalloc(&split_.tickets, kGemvTickets * sizeof(unsigned)), "cudaMalloc (GEMV tickets)");
    LOWBIT_CUDA_RETURN(cudaMemset(split_.tickets, 0, kGemvTickets * sizeof(unsigned)), "cudaMemset (GEMV tickets)");
    LOWBIT_CUDA_RETURN(cudaDeviceSynchronize(), "cudaMemset (GEMV tickets) sync");
    split_.ticket_count = kGemvTickets;
    split_.part = lt_ws_;
    split_.part_bytes = kLtWorkspace;
    split_.sms = prop.multiProcessorCount;
    split_.min_m = GemvSplitMinM();
    return Reserve(workspace_bytes ? workspace_bytes : (64u << 20));
  }

  std::string name() const override { return name_; }
  std::string Requirements() const override {
    return name_ +
           ": M ≥ 1 (up to 4,194,240); W8A8 needs K % 4 == 0 (dword loads; with K % 16 == 0 the int8 "
           "tensor cores: mma.sync when M ≤ 16 (sm_80+), and when M > 16 CUTLASS wgmma on sm_90 for f16/bf16 "
           "output with N % 16 == 0, else cuBLASLt int8 with N % 16 == 0, sm_80+); FP8 any K, N (M ≤ 16 and "
           "K % 16 == 0: mma.sync weight streaming, sm_89+; M > 16 on sm_90: CUTLASS wgmma for f16/bf16 output with "
           "K, N multiples of 16; else cuBLASLt when "
           "K % 16 == 0, N % 16 == 0, no bias, sm_89+ for per-tensor and sm_90+ for per-token × per-channel "
           "scales; else the simple kernel); W4A16 needs K % 8 == 0 and a group size that is a multiple of 8 "
           "(M ≤ 16: mma.sync weight streaming when K % 32 == 0, sm_80+; M > 16: CUTLASS mixed-input on sm_90 for "
           "symmetric weights with K % 64 == 0, N % 8 == 0, a group size of K or a multiple of 64 and scales exact "
           "in the activation type, else dequantize + cuBLAS); "
           "device pointers 16-byte aligned (cudaMalloc gives 256).";
  }

  Status Alloc(size_t bytes, void** ptr) override {
    LOWBIT_KRETURN_IF_ERROR(UseDevice());
    return CudaStatus(cudaMalloc(ptr, std::max<size_t>(bytes, 1)), "cudaMalloc");
  }
  void Free(void* ptr) override {
    (void)UseDevice();
    FreeQuietly(ptr);
  }
  Status CopyIn(void* dst, const void* src, size_t bytes) override {
    LOWBIT_KRETURN_IF_ERROR(UseDevice());
    LOWBIT_CUDA_RETURN(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_), "CopyIn");
    return CudaStatus(cudaStreamSynchronize(stream_), "CopyIn sync");
  }
  Status CopyOut(void* dst, const void* src, size_t bytes) override {
    LOWBIT_KRETURN_IF_ERROR(UseDevice());
    LOWBIT_CUDA_RETURN(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_), "CopyOut");
    return CudaStatus(cudaStreamSynchronize(stream_), "CopyOut sync");
  }
  Status Synchronize() override {
    LOWBIT_KRETURN_IF_ERROR(UseDevice());
    return CudaStatus(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
  }
  Status SetStream(void* stream) override {
    LOWBIT_KRETURN_IF_ERROR(UseDevice());
    // The arena and the cuBLASLt workspace are shared by every call: work still queued on the
    // old stream must finish before calls on the new one reuse them.
    if (static_cast<cudaStream_t>(stream) != stream_)
      LOWBIT_CUDA_RETURN(cudaStreamSynchronize(stream_), "SetStream: sync the previous stream");
    stream_ = static_cast<cudaStream_t>(stream);
    if (cublasSetStream(blas_, stream_) != CUBLAS_STATUS_SUCCESS) return Internal("cublasSetStream failed");
    return UseBlasWorkspace();
  }

  Status QuantizeInt8PerToken(DType dt, const void* x, int64_t m, int64_t k, int8_t* q, float* scale) override {
    LOWBIT_KRETURN_IF_ERROR(UseDevice());
    LOWBIT_KRETURN_IF_ERROR(ValidateQuantize("QuantizeInt8PerToken", dt, x, m, k, q, scale, true));
    return LaunchQuantInt8PerToken(ToElem(dt), x, m, k, q, scale, stream_);
  }
  Status QuantizeFp8PerTensor(DType dt, const void* x, int64_t m, int64_t k, float scale, uint8_t* q) override {
    LOWBIT_KRETURN_IF_ERROR(UseDevice());
    LOWBIT_KRETURN_IF_ERROR(ValidateQuantize("QuantizeFp8PerTensor", dt, x, m, k, q, nullptr, false));
    LOWBIT_KRETURN_IF_ERROR(ValidateStaticScale("QuantizeFp8PerTensor", scale));
    return LaunchQuantFp8(ToElem(dt), x, m, k, nullptr, scale, q, nullptr, stream_);
  }
  Status QuantizeFp8PerToken(DType dt, const void* x, int64_t m, int64_t k, uint8_t* q, float* scale) override {
    LOWBIT_KRETURN_IF_ERROR(UseDevice());
    LOWBIT_KRETURN_IF_ERROR(ValidateQuantize("QuantizeFp8PerToken", dt, x, m, k, q, scale, true));
    return LaunchQuantFp8(ToElem(dt), x, m, k, nullptr, 1.0f, q, scale, stream_);
  }

  Status PrepareInt8(const Int8WeightSource& src, std::unique_ptr<PreparedWeight>* out) override {
    LOWBIT_KRETURN_IF_ERROR(UseDevice());
    LOWBIT_KRETURN_IF_ERROR(ValidatePrepareOut(name_, out));
    LOWBIT_KRETURN_IF_ERROR(ValidateInt8Source(src));
    if (src.k % 4 != 0)
      return InvalidArgument(name_ + ": W8A8 needs K % 4 == 0 (dp4a dword loads); got K = " + S(src.k));
    auto w = std::make_unique<CudaWeight>(name_, WeightKind::kInt8, src.n, src.k);
    w->SetMeta(0, src.scale.count != 1, false, false);
    std::vector<float> sc = ScalesToFloat(src.scale);
    void* p;
    LOWBIT_KRETURN_IF_ERROR(w->Upload(src.weight, src.n * src.k, stream_, &p));
    w->w = p;
    LOWBIT_KRETURN_IF_ERROR(w->Upload(sc.data(), sc.size() * 4, stream_, &p));
    w->scale = static_cast<const float*>(p);
    w->scale_count = static_cast<int64_t>(sc.size());
    *out = std::move(w);
    return Status::Ok();
  }

  Status PrepareFp8(const Fp8WeightSource& src, std::unique_ptr<PreparedWeight>* out) override {
    LOWBIT_KRETURN_IF_ERROR(UseDevice());
    LOWBIT_KRETURN_IF_ERROR(ValidatePrepareOut(name_, out));
    LOWBIT_KRETURN_IF_ERROR(ValidateFp8Source(src));
    auto w = std::make_unique<CudaWeight>(name_, WeightKind::kFp8, src.n, src.k);
    w->SetMeta(0, src.scale.count != 1, false, false);
    std::vector<float> sc = ScalesToFloat(src.scale);
    std::vector<float> vec(src.n, sc[0]);
    if (sc.size() > 1) vec = sc;
    void* p;
    LOWBIT_KRETURN_IF_ERROR(w->Upload(src.weight, src.n * src.k, stream_, &p));
    w->w = p;
    LOWBIT_KRETURN_IF_ERROR(w->Upload(sc.data(), sc.size() * 4, stream_, &p));
    w->scale = static_cast<const float*>(p);
    w->scale_count = static_cast<int64_t>(sc.size());
    LOWBIT_KRETURN_IF_ERROR(w->Upload(vec.data(), vec.size() * 4, stream_, &p));
    w->scale_vec = static_cast<const float*>(p);
    *out = std::move(w);
    return Status::Ok();
  }

  Status PrepareInt4(const Int4WeightSource& src, std::unique_ptr<PreparedWeight>* out) override {
    LOWBIT_KRETURN_IF_ERROR(UseDevice());
    LOWBIT_KRETURN_IF_ERROR(ValidatePrepareOut(name_, out));
    LOWBIT_KRETURN_IF_ERROR(ValidateInt4Source(src));
    if (src.k % 8 != 0) return InvalidArgument(name_ + ": W4A16 needs K % 8 == 0; got K = " + S(src.k));
    const int64_t gs = Int4GroupSize(src.k, src.group_size);
    if (gs % 8 != 0) return InvalidArgument(name_ + ": W4A16 needs a group size that is a multiple of 8; got " + S(gs));
    DecodedInt4 d;
    LOWBIT_KRETURN_IF_ERROR(DecodeInt4(src, &d));
    auto w = std::make_unique<CudaWeight>(name_, WeightKind::kInt4, src.n, src.k);
    w->SetMeta(gs, true, d.asym, !d.perm.empty());
    const int64_t n = src.n, k = src.k, words = k / 8;
    // The kernels read q as a signed nibble: the decoded rows (K % 8 == 0: whole words) with each
    // nibble's q + 8 turned into q & 15, i.e. its top bit flipped.
    std::vector<int32_t> packed(n * words);
    std::memcpy(packed.data(), d.nibbles.data(), d.nibbles.size());
    for (int32_t& v : packed) v = static_cast<int32_t>(static_cast<uint32_t>(v) ^ 0x88888888u);
    void* p;
    LOWBIT_KRETURN_IF_ERROR(w->Upload(packed.data(), packed.size() * 4, stream_, &p));
    w->w4.packed = static_cast<const int32_t*>(p);
    LOWBIT_KRETURN_IF_ERROR(w->Upload(d.scale.data(), d.scale.size() * 4, stream_, &p));
    w->w4.scale = static_cast<const float*>(p);
    w->w4.zero = nullptr;
    if (d.asym) {
      std::vector<float> z(d.zero.begin(), d.zero.end());
      LOWBIT_KRETURN_IF_ERROR(w->Upload(z.data(), z.size() * 4, stream_, &p));
      w->w4.zero = static_cast<const float*>(p);
    }
    w->w4.groups = d.groups;
    w->w4.group_size = gs;
    if (!d.perm.empty()) {
      LOWBIT_KRETURN_IF_ERROR(w->Upload(d.perm.data(), d.perm.size() * 4, stream_, &p));
      w->perm = static_cast<const int32_t*>(p);
    }
    // Scales that are values of the activation type T let symmetric weights be dequantized in T
    // arithmetic (mma.sync GEMV) and by CUTLASS with the reference's round_T(q · s).
    for (DType t : {DType::kF16, DType::kBF16})
      w->w4_scale_exact[t == DType::kBF16] = std::all_of(
          d.scale.begin(), d.scale.end(), [t](float v) { return std::isfinite(v) && RoundToDType(v, t) == v; });
#if LOWBIT_KERNELS_HAVE_CUTLASS
    // The CUTLASS mixed-input GEMM (M > 16, symmetric weights) reads the group scales as T values,
    // [G, N]: a copy for each T that holds every scale exactly.
    if (use_cutlass_ && !d.asym && sm90::W4A16Supported(n, k, gs)) {
      for (DType t : {DType::kF16, DType::kBF16}) {
        if (!w->w4_scale_exact[t == DType::kBF16]) continue;
        std::vector<uint16_t> st(d.scale.size());
        for (int64_t r = 0; r < n; ++r)
          for (int64_t g = 0; g < d.groups; ++g) {
            const float v = d.scale[r * d.groups + g];
            st[g * n + r] = t == DType::kBF16 ? FloatToBf16(v) : FloatToFp16(v);
          }
        LOWBIT_KRETURN_IF_ERROR(w->Upload(st.data(), st.size() * 2, stream_, &p));
        w->w4_scale_t[t == DType::kBF16] = p;
      }
    }
#endif
    // Reserve here what a call needs for this weight, so the GEMMs do not grow the arena: the
    // dequantized W' of the cuBLAS path (unless the CUTLASS kernel takes the M > 16 calls of an
    // activation type; a call in the other type then grows the arena) plus kW4MinChunkRows rows.
    const bool blas_w = !simple_ && w->w4_scale_t[0] == nullptr && w->w4_scale_t[1] == nullptr;
    const W4Plan plan = PlanW4(n, k, w->perm != nullptr, blas_w);
    LOWBIT_KRETURN_IF_ERROR(Reserve(plan.fixed + 512 + plan.per_row * kW4MinChunkRows));
    *out = std::move(w);
    return Status::Ok();
  }

  Status GemmW8A8(const GemmArgs& a) override {
    LOWBIT_KRETURN_IF_ERROR(UseDevice());
    LOWBIT_KRETURN_IF_ERROR(ValidateGemm("GemmW8A8", a, WeightKind::kInt8, name_, kMaxM));
    // Every W8A8 kernel reads the int8 activations as 32-bit words (K % 4 == 0 keeps each row's
    // start aligned once the first is); a misaligned address would fault and poison the context.
    if (reinterpret_cast<uintptr_t>(a.x) % 4 != 0)
      return InvalidArgument(name_ + ": GemmW8A8: x is not 4-byte aligned (address % 4 = " +
                             S(static_cast<int64_t>(reinterpret_cast<uintptr_t>(a.x) % 4)) +
                             "); the kernels read int8 activations as 32-bit words");
    const auto& w = static_cast<const CudaWeight&>(*a.w);
    const int64_t m = a.m, n = w.n(), k = w.k();
    const auto* x = static_cast<const int8_t*>(a.x);
    const auto* wq = static_cast<const int8_t*>(w.w);
    const int yt = ToElem(a.y_dtype);
    const bool k16 = k % 16 == 0 && Aligned16(x) && Aligned16(wq);
    // M ≤ 16: stream the weight through the int8 tensor cores (mma.sync).
    if (!simple_ && mma_sm_ >= 80 && m <= kW8A8GemvMaxM && k16) {
      int64_t slices = 0;
      LOWBIT_KRETURN_IF_ERROR(LaunchGemvW8A8(x, a.x_scale, a.x_scale_count, wq, w.scale, w.scale_count, a.bias, m, n, k,
                                             yt, a.y, &split_, &slices, stream_));
      if (trace_.on()) trace_.Note(name_, "W8A8", m, n, k, GemvPath(slices, kGemv8SplitRows, kGemv8Rows).c_str());
      return Status::Ok();
    }
    // Hopper, M > 16: CUTLASS wgmma + TMA with the scales and bias fused into the epilogue (a
    // problem it refuses goes on below).
    if (ScaledSm90Ok(a, w)) {
      Status st = RunScaledSm90(/*fp8=*/false, a, w);
      if (st.code() != StatusCode::kUnimplemented) return st;
    }
    // M > 16 elsewhere: the int32 accumulators from cuBLASLt's int8 tensor cores (as torch._int_mm, which
    // needs M > 16 and K, N multiples of 8), in the arena, M in chunks of the rows that fit, then
    // the same epilogue as the SIMT kernel, so the output is the same bits. A chunk cuBLASLt has
    // no algorithm for runs on the SIMT kernel.
    const size_t row_bytes = static_cast<size_t>(n) * sizeof(int32_t);
    const bool lt_ok = !simple_ && sm_ >= 80 && m > kGemvMaxM && k % 16 == 0 && n % 16 == 0 &&
                       reinterpret_cast<uintptr_t>(x) % 16 == 0 && arena_bytes_ >= row_bytes * kGemvMaxM;
    // Chunks after the first start at a multiple of 16 rows, so x + r0·K keeps x's alignment.
    const int64_t fit = static_cast<int64_t>(arena_bytes_ / row_bytes);
    const int64_t chunk = !lt_ok || m <= fit ? m : fit / 16 * 16;
    const size_t y_elem = a.y_dtype == DType::kF32 ? 4 : 2;
    for (int64_t r0 = 0; r0 < m; r0 += chunk) {
      const int64_t rows = std::min(chunk, m - r0);
      bool used = false;
      if (lt_ok) {
        LOWBIT_KRETURN_IF_ERROR(
            lt_gemms_->Int8(x + r0 * k, wq, rows, n, k, static_cast<int32_t*>(arena_), stream_, &used));
      }
      trace_.Note(name_, "W8A8", rows, n, k, used ? "cuBLASLt int8 + epilogue" : "SIMT dp4a");
      if (used) {
        LOWBIT_KRETURN_IF_ERROR(LaunchW8A8Epilogue(static_cast<const int32_t*>(arena_), r0, rows, a.x_scale,
                                                   a.x_scale_count, w.scale, w.scale_count, a.bias, n, yt, a.y,
                                                   stream_));
      } else {
        LOWBIT_KRETURN_IF_ERROR(LaunchGemmW8A8(
            x + r0 * k, a.x_scale + (a.x_scale_count == 1 ? 0 : r0), a.x_scale_count, wq, w.scale, w.scale_count,
            a.bias, rows, n, k, yt, static_cast<char*>(a.y) + static_cast<size_t>(r0) * n * y_elem, stream_));
      }
    }
    return Status::Ok();
  }

  Status GemmFp8(const GemmArgs& a) override {
    LOWBIT_KRETURN_IF_ERROR(UseDevice());
    LOWBIT_KRETURN_IF_ERROR(ValidateGemm("GemmFp8", a, WeightKind::kFp8, name_, kMaxM));
    const auto& w = static_cast<const CudaWeight&>(*a.w);
    const int64_t m = a.m, n = w.n(), k = w.k();
    // M ≤ 16: stream the weight through the e4m3 tensor cores (mma.sync).
    if (!simple_ && mma_sm_ >= 89 && m <= kW8A8GemvMaxM && k % 16 == 0 && Aligned16(a.x) && Aligned16(w.w)) {
      int64_t slices = 0;
      LOWBIT_KRETURN_IF_ERROR(LaunchGemvFp8(static_cast<const uint8_t*>(a.x), a.x_scale, a.x_scale_count,
                                            static_cast<const uint8_t*>(w.w), w.scale, w.scale_count, a.bias, m, n, k,
                                            ToElem(a.y_dtype), a.y, &split_, &slices, stream_));
      if (trace_.on()) trace_.Note(name_, "FP8", m, n, k, GemvPath(slices, kGemv8SplitRows, kGemv8Rows).c_str());
      return Status::Ok();
    }
    // Hopper, M > 16: CUTLASS wgmma + TMA with the scales and bias fused into the epilogue (a
    // problem it refuses goes on below).
    if (ScaledSm90Ok(a, w)) {
      Status st = RunScaledSm90(/*fp8=*/true, a, w);
      if (st.code() != StatusCode::kUnimplemented) return st;
    }
    const bool outer = a.x_scale_count > 1 || w.scale_count > 1;
    const bool broadcast = outer && a.x_scale_count == 1;  // x scale expanded to [M] in the arena
    const bool lt_ok = !simple_ && a.bias == nullptr && k % 16 == 0 && n % 16 == 0 && sm_ >= (outer ? 90 : 89) &&
                       Aligned16(a.x) && Aligned16(w.w) && Aligned16(a.y) &&
                       (!broadcast || static_cast<size_t>(m) * sizeof(float) <= arena_bytes_);
    if (lt_ok) {
      const float* xs = a.x_scale;
      const float* ws = outer ? w.scale_vec : w.scale;
      if (broadcast) {
        LOWBIT_KRETURN_IF_ERROR(LaunchBroadcast(static_cast<float*>(arena_), a.x_scale, m, stream_));
        xs = static_cast<const float*>(arena_);
      }
      bool used = false;
      LOWBIT_KRETURN_IF_ERROR(lt_gemms_->Fp8(static_cast<const uint8_t*>(a.x), xs, static_cast<const uint8_t*>(w.w), ws,
                                             outer, m, n, k, a.y_dtype, a.y, stream_, &used));
      if (used) {
        trace_.Note(name_, "FP8", m, n, k, outer ? "cuBLASLt FP8 outer-vector scales" : "cuBLASLt FP8");
        return Status::Ok();
      }
    }
    trace_.Note(name_, "FP8", m, n, k, "simple tiled");
    return LaunchGemmFp8Simple(static_cast<const uint8_t*>(a.x), a.x_scale, a.x_scale_count,
                               static_cast<const uint8_t*>(w.w), w.scale, w.scale_count, a.bias, m, n, k,
                               ToElem(a.y_dtype), a.y, stream_);
  }

  Status GemmW4A16(const GemmArgs& a) override {
    LOWBIT_KRETURN_IF_ERROR(UseDevice());
    LOWBIT_KRETURN_IF_ERROR(ValidateGemm("GemmW4A16", a, WeightKind::kInt4, name_, kMaxM));
    const auto& w = static_cast<const CudaWeight&>(*a.w);
    const int64_t m = a.m, n = w.n(), k = w.k();
    const int xt = ToElem(a.x_dtype);
    const void* scale_t = w.w4_scale_t[a.x_dtype == DType::kBF16];
    const bool use_cutlass = use_cutlass_ && m > kGemvMaxM && scale_t != nullptr && Aligned16(a.y) &&
                             (w.perm != nullptr || Aligned16(a.x)) && (a.bias == nullptr || Aligned16(a.bias));
    const bool use_blas = !simple_ && m > kGemvMaxM && !use_cutlass;
    // Workspace layout: [dequantized W' (cuBLAS path)][permuted X rows][f32 C rows], each 256-byte
    // aligned; M is processed in chunks of the rows that fit the arena (PrepareInt4 reserved
    // W' + kW4MinChunkRows rows), so the call allocates nothing.
    const W4Plan plan = PlanW4(n, k, w.perm != nullptr, use_blas);
    int64_t chunk = m;
    if (plan.per_row > 0) {
      const size_t need = plan.fixed + 512 + plan.per_row * static_cast<size_t>(std::min(m, kW4MinChunkRows));
      if (arena_bytes_ < need) LOWBIT_KRETURN_IF_ERROR(Reserve(need));  // only for a weight another instance prepared
      chunk = std::min<int64_t>(m, static_cast<int64_t>((arena_bytes_ - plan.fixed - 512) / plan.per_row));
    }
    char* ws = static_cast<char*>(arena_);
    void* wd = ws;
    char* xp = ws + plan.fixed;
    if (use_blas) LOWBIT_KRETURN_IF_ERROR(LaunchDequantW4(xt, w.w4, n, k, wd, stream_));
    const cudaDataType_t t = a.x_dtype == DType::kF16 ? CUDA_R_16F : CUDA_R_16BF;
    const float alpha = 1.0f, beta = 0.0f;
    for (int64_t r0 = 0; r0 < m; r0 += chunk) {
      const int64_t rows = std::min(chunk, m - r0);
      const void* x = static_cast<const char*>(a.x) + static_cast<size_t>(r0) * k * 2;
      void* y = static_cast<char*>(a.y) + static_cast<size_t>(r0) * n * 2;
      const size_t xp_bytes = w.perm ? Align256(static_cast<size_t>(rows) * k * 2) : 0;
      if (w.perm) {
        LOWBIT_KRETURN_IF_ERROR(LaunchPermuteColumns(x, w.perm, rows, k, xp, stream_));
        x = xp;
      }
      if (m <= kGemvMaxM && !simple_ && mma_sm_ >= 80 && k % 32 == 0 && Aligned16(x)) {
        const bool scales_exact = w.w4_scale_exact[a.x_dtype == DType::kBF16];
        int64_t slices = 0;
        LOWBIT_KRETURN_IF_ERROR(
            LaunchGemvW4Mma(xt, x, w.w4, a.bias, rows, n, k, y, scales_exact, &split_, &slices, stream_));
        if (trace_.on())
          trace_.Note(name_, "W4A16", rows, n, k,
                      (GemvPath(slices, kGemvW4SplitRows, kGemvW4Rows) +
                       (GemvW4MmaPacked(w.w4, scales_exact) ? ", packed dequant" : ""))
                          .c_str());
      } else if (m <= kGemvMaxM) {
        trace_.Note(name_, "W4A16", rows, n, k, "SIMT GEMV");
        LOWBIT_KRETURN_IF_ERROR(LaunchGemvW4(xt, x, w.w4, a.bias, rows, n, k, y, stream_));
#if LOWBIT_KERNELS_HAVE_CUTLASS
      } else if (use_cutlass) {
        sm90::W4A16Sm90Args s;
        s.w = w.w4.packed, s.scale = scale_t, s.group_size = w.w4.group_size;
        s.x = x, s.bias = a.bias, s.m = rows, s.n = n, s.k = k, s.y = y;
        s.workspace = lt_ws_, s.workspace_bytes = kLtWorkspace;
        // A problem CUTLASS refuses (kUnimplemented, nothing enqueued; W4A16Supported and the
        // alignment checks make it unlikely) runs on the plain kernel, which needs no workspace.
        const Status st = sm90::GemmW4A16(s, a.x_dtype == DType::kBF16, stream_);
        const bool refused = st.code() == StatusCode::kUnimplemented;
        trace_.Note(name_, "W4A16", rows, n, k, refused ? "simple tiled (CUTLASS refused)" : "CUTLASS sm90");
        LOWBIT_KRETURN_IF_ERROR(refused ? LaunchGemmW4Simple(xt, x, w.w4, a.bias, rows, n, k, y, stream_) : st);
#endif
      } else if (!use_blas) {
        trace_.Note(name_, "W4A16", rows, n, k, "simple tiled");
        LOWBIT_KRETURN_IF_ERROR(LaunchGemmW4Simple(xt, x, w.w4, a.bias, rows, n, k, y, stream_));
      } else {
        trace_.Note(name_, "W4A16", rows, n, k, "dequantize + cuBLAS");
        float* c = reinterpret_cast<float*>(xp + xp_bytes);
        cublasStatus_t st =
            cublasGemmEx(blas_, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(n), static_cast<int>(rows),
                         static_cast<int>(k), &alpha, wd, t, static_cast<int>(k), x, t, static_cast<int>(k), &beta, c,
                         CUDA_R_32F, static_cast<int>(n), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
        if (st != CUBLAS_STATUS_SUCCESS)
          return Internal("cublasGemmEx (W4A16) failed: status " + S(static_cast<int>(st)));
        LOWBIT_KRETURN_IF_ERROR(LaunchBiasRound(c, a.bias, rows, n, ToElem(a.y_dtype), y, stream_));
      }
    }
    return Status::Ok();
  }

 private:
  // cuBLAS on the backend's workspace (calls on the stream run in turn), not a pool it allocates
  // per stream: nothing to allocate when a caller captures the stream into a CUDA graph. Again
  // after every cublasSetStream, which resets it.
  Status UseBlasWorkspace() {
    if (cublasSetWorkspace(blas_, lt_ws_, kLtWorkspace) != CUBLAS_STATUS_SUCCESS)
      return Internal("cublasSetWorkspace failed");
    return Status::Ok();
  }

  // The device current on the calling thread (cudaSetDevice is per thread; callers may use any
  // thread). Cheap when it already is.
  Status UseDevice() const { return CudaStatus(cudaSetDevice(device_), "cudaSetDevice"); }

  // Whether a W8A8 / FP8 call can take the CUTLASS sm_90 kernel: M > 16, K and N multiples of 16,
  // f16/bf16 output, 16-byte aligned operands.
  bool ScaledSm90Ok(const GemmArgs& a, const CudaWeight& w) const {
    return use_cutlass_ && a.m > kW8A8GemvMaxM && w.k() % 16 == 0 && w.n() % 16 == 0 && a.y_dtype != DType::kF32 &&
           Aligned16(a.x) && Aligned16(w.w) && Aligned16(a.y) && Aligned16(a.x_scale) &&
           (a.bias == nullptr || Aligned16(a.bias));
  }
  // kUnimplemented (nothing enqueued) when CUTLASS refuses the problem; the caller goes on.
  Status RunScaledSm90(bool fp8, const GemmArgs& a, const CudaWeight& w) {
#if LOWBIT_KERNELS_HAVE_CUTLASS
    sm90::ScaledSm90Args s;
    s.x = a.x, s.x_scale = a.x_scale, s.x_scale_count = a.x_scale_count;
    s.w = w.w, s.w_scale = w.scale, s.w_scale_count = w.scale_count, s.bias = a.bias;
    s.m = a.m, s.n = w.n(), s.k = w.k(), s.y = a.y;
    s.workspace = lt_ws_, s.workspace_bytes = kLtWorkspace;  // free: calls on the stream run in turn
    const bool bf16 = a.y_dtype == DType::kBF16;
    Status st = fp8 ? sm90::GemmFp8(s, bf16, stream_) : sm90::GemmW8A8(s, bf16, stream_);
    if (st.code() != StatusCode::kUnimplemented)
      trace_.Note(name_, fp8 ? "FP8" : "W8A8", a.m, s.n, s.k, "CUTLASS sm90");
    return st;
#else
    (void)fp8, (void)a, (void)w;
    return Unimplemented("RunScaledSm90: built without CUTLASS");  // unreachable: use_cutlass_ stays false
#endif
  }

  // The workspace arena: one device buffer that grows to the high-water mark (the only
  // allocation outside Prepare*/Alloc; steady-state calls allocate nothing).
  Status Reserve(size_t bytes) {
    if (bytes <= arena_bytes_) return Status::Ok();
    // Growing syncs the stream and allocates, which would invalidate a CUDA graph being captured
    // from it (a W4A16 call in the activation type its CUTLASS kernel does not take, on a weight
    // prepared without the dequantized W'): refused with the fix instead.
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    LOWBIT_CUDA_RETURN(cudaStreamIsCapturing(stream_, &capture), "cudaStreamIsCapturing");
    if (capture != cudaStreamCaptureStatusNone)
      return FailedPrecondition(name_ + ": this call needs " + S(bytes) + " bytes of workspace, " + S(arena_bytes_) +
                                " are reserved, and the stream is being captured into a CUDA graph, which allocating "
                                "would break; run the same call once before capturing");
    if (arena_) {
      LOWBIT_CUDA_RETURN(cudaStreamSynchronize(stream_), "arena grow sync");
      FreeQuietly(arena_);
      arena_ = nullptr;
      arena_bytes_ = 0;  // a failed cudaMalloc below must not leave a stale size with no buffer
    }
    LOWBIT_CUDA_RETURN(cudaMalloc(&arena_, bytes), "cudaMalloc (workspace arena)");
    arena_bytes_ = bytes;
    return Status::Ok();
  }
  // W4A16 workspace needs: `fixed` bytes (W' for the cuBLAS path) plus `per_row` bytes per row
  // of M (permuted X when act order, f32 C for the cuBLAS path), 512 bytes of alignment slack.
  struct W4Plan {
    size_t fixed, per_row;
  };
  static W4Plan PlanW4(int64_t n, int64_t k, bool perm, bool use_blas) {
    return {use_blas ? Align256(static_cast<size_t>(n) * k * 2) : 0,
            (perm ? static_cast<size_t>(k) * 2 : 0) + (use_blas ? static_cast<size_t>(n) * 4 : 0)};
  }

  std::string name_;
  bool simple_;
  int device_;
  int sm_ = 0;
  int mma_sm_ = 0;  // min(sm_, the architecture the running code was compiled for): which mma.sync it has
  bool use_cutlass_ = false;  // the sm_90a CUTLASS kernels (when built in)
  cudaStream_t stream_ = nullptr;
  cublasHandle_t blas_ = nullptr;
  cublasLtHandle_t lt_ = nullptr;
  void* lt_ws_ = nullptr;
  GemvSplitWork split_;                            // the split-K GEMVs' scratch (their partials in lt_ws_)
  std::unique_ptr<cuda::CublasLtGemms> lt_gemms_;  // cuBLASLt plans per shape
  void* arena_ = nullptr;
  size_t arena_bytes_ = 0;
  PathTrace trace_;
};

}  // namespace

Status MakeCudaBackend(const BackendOptions& options, bool simple, std::unique_ptr<Backend>* out) {
  auto b = std::make_unique<CudaBackend>(simple ? "cuda-simple" : "cuda", simple, options.device);
  LOWBIT_KRETURN_IF_ERROR(b->Init(options.workspace_bytes));
  *out = std::move(b);
  return Status::Ok();
}

}  // namespace lowbit::kernels
