// The kernel backend interface: activation quantization and the quantized GEMMs the runtime
// executes (W8A8-INT8, FP8-E4M3, W4A16), on the CPU or a CUDA device.
//
// Memory. Activations, scales, bias and outputs passed to an op live in the backend's memory
// (host memory for "cpu", device memory for "cuda"; use Alloc / CopyIn / CopyOut). Weights are
// given once, in checkpoint form in host memory (the compressed-tensors tensors of a Linear),
// to Prepare*(), which validates them, repacks them into the backend's kernel layout and
// returns a PreparedWeight that the GEMMs take. Repacking never happens on the hot path.
//
// Numerics (design.md §4; the CPU reference in kernels/reference.h is the oracle):
//   The quantizers use the arithmetic of vLLM's kernels, so their codes match vLLM's bit for bit:
//   QuantizeInt8PerToken  s[m] = absmax(x[m,:]) / 127, q = round_half_even(clamp(x · (127 / absmax),
//                         -128, 127)), f32 math; a row whose s is 0 or whose 127 / absmax
//                         overflows (all zero, or an f32 or bf16 row with absmax < ≈ 3.7e-37) gets s = 1
//                         and codes 0.
//   QuantizeFp8PerTensor  q = fp8_e4m3(clamp(x · (1 / s), -448, 448)) (RNE, saturating), s given.
//   QuantizeFp8PerToken   s[m] = max(absmax / 448, kFp8MinPerTokenScale), q = fp8_e4m3(clamp(x / s)).
//   Both per-token quantizers: a row holding a NaN or an infinity gets s[m] = NaN (the bits
//   kNonFiniteRowScaleBits on every backend) and all codes 0, so each GEMM output of that row is
//   NaN — as a float GEMM's would be NaN or infinite — never finite garbage. Per tensor: NaN
//   stays a NaN code with its sign (0x7F / 0xFF, as PyTorch's e4m3fn conversion gives it), ±inf
//   saturates to ±448 (the clamp).
//   GemmW8A8   Y[m,n] = round_out(((float)acc[m,n] * w_scale[n]) * x_scale[m] + bias[n]),
//              acc = Σ_k Xq[m,k]·Wq[n,k] in exact int32, every float op in f32 (no FMA), so
//              every backend agrees bit for bit. Per-tensor scales: count 1.
//   GemmFp8    Y[m,n] = round_out(x_scale[m] · w_scale[n] · Σ_k X[m,k]·W[n,k] + bias[n]);
//              the sum is f32 (or better) accumulation, so backends agree within a tolerance.
//   GemmW4A16  W'[n,k] = round_act((q[n,k] − z[n,g]) · s[n,g]) with g = g_idx[k] or
//              k / group_size; Y[m,n] = round_out(Σ_k X[m,k]·W'[n,k] + bias[n]) with f32
//              accumulation; the output dtype is the activation dtype.
//
// Threads. A Backend is not thread-safe: callers serialize every call on one backend, Prepare*
// and the destruction of its PreparedWeights included (the runtime holds BackendHandle::mu).
// A CUDA backend may be called from any host thread; it makes its device current on each call.
// Its GEMMs allocate nothing once a call of the same kind ran (Prepare* reserves the workspace a
// weight's calls need), so they can be captured into a CUDA graph; a call that would have to grow
// the workspace during a capture fails with FailedPrecondition instead (run it once first). A
// Prepare* whose weight needs more workspace than any before it replaces the workspace, freeing
// the one that graphs captured earlier use: capture after the last Prepare*, or capture again.
//
// Shapes. M ≥ 1 (tested 1..4096; the interface takes any M up to 16384 and beyond).
// K and N requirements differ per backend and op; Requirements() says which, and every op
// returns InvalidArgument with the offending value when they are not met.
#ifndef LOWBIT_KERNELS_BACKEND_H_
#define LOWBIT_KERNELS_BACKEND_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/dtype.h"
#include "kernels/status.h"

namespace lowbit::kernels {

using ::lowbit::DType;

// The scale of a per-token-quantized row holding a NaN or an infinity: a quiet NaN (see above).
constexpr uint32_t kNonFiniteRowScaleBits = 0x7FC00000u;
// The smallest per-token FP8 scale (vLLM's min_scaling_factor, 1 / (448 · 512)).
constexpr float kFp8MinPerTokenScale = 1.0f / (448.0f * 512.0f);

// ---- Weights in checkpoint form (host memory) -----------------------------------------------

// A float vector given in the checkpoint's dtype (F32, F16 or BF16).
struct ScaleView {
  const void* data = nullptr;
  DType dtype = DType::kF32;
  int64_t count = 0;
};

// compressed-tensors W8A8-INT8 / W8A16: weight int8 [N, K], weight_scale [N] or [1].
struct Int8WeightSource {
  const int8_t* weight = nullptr;
  int64_t n = 0, k = 0;
  ScaleView scale;
};

// compressed-tensors FP8: weight F8_E4M3 [N, K], weight_scale [N] or [1].
struct Fp8WeightSource {
  const uint8_t* weight = nullptr;
  int64_t n = 0, k = 0;
  ScaleView scale;
};

// compressed-tensors pack-quantized int4 (W4A16, W4A16_ASYM):
//   weight_packed      int32 [N, ceil(K/8)], 8 codes per word along K, first code in the lowest
//                      bits, each code stored + 8;
//   weight_scale       [N, G] with G = ceil(K / group_size), or [N, 1] per channel;
//   weight_zero_point  int32 [ceil(N/8), G] packed the same way along N (asymmetric only);
//   weight_g_idx       int32 [K] (activation order "group"), column k uses group g_idx[k].
struct Int4WeightSource {
  const int32_t* weight_packed = nullptr;
  int64_t n = 0, k = 0;
  int64_t group_size = 0;                      // 0 (or ≥ K) = per channel
  ScaleView scale;                             // count must be N * G
  const int32_t* zero_point_packed = nullptr;  // null = symmetric
  const int32_t* g_idx = nullptr;              // null = k / group_size
};

enum class WeightKind { kInt8, kFp8, kInt4 };

// A weight repacked for one backend. Created by that backend's Prepare*(), used only with it.
class PreparedWeight {
 public:
  virtual ~PreparedWeight() = default;
  WeightKind kind() const { return kind_; }
  int64_t n() const { return n_; }
  int64_t k() const { return k_; }
  int64_t group_size() const { return group_size_; }       // int4: K for per channel
  bool per_channel_scale() const { return per_channel_; }  // int8 / fp8: [N] vs [1]
  bool asymmetric() const { return asym_; }
  bool act_order() const { return act_order_; }
  const std::string& backend() const { return backend_; }
  // Bytes this weight holds in the backend's memory: its kernel layout, scales, column sums and
  // index arrays (what a memory budget should count; the layout can be larger than the
  // checkpoint's tensors, e.g. FP8 held as bf16 on the CPU).
  virtual int64_t bytes() const = 0;

 protected:
  PreparedWeight(std::string backend, WeightKind kind, int64_t n, int64_t k)
      : backend_(std::move(backend)), kind_(kind), n_(n), k_(k) {}
  std::string backend_;
  WeightKind kind_;
  int64_t n_, k_;
  int64_t group_size_ = 0;
  bool per_channel_ = false, asym_ = false, act_order_ = false;
};

// ---- GEMM arguments (backend memory) --------------------------------------------------------

struct GemmArgs {
  int64_t m = 0;
  const void* x = nullptr;  // int8 [M,K] (W8A8), E4M3 [M,K] (FP8), f16/bf16 [M,K] (W4A16)
  DType x_dtype = DType::kI8;
  const float* x_scale = nullptr;  // [M] or [1] (W8A8, FP8); unused by W4A16
  int64_t x_scale_count = 0;
  const PreparedWeight* w = nullptr;
  const float* bias = nullptr;   // optional, f32 [N]
  void* y = nullptr;             // [M, N] row-major
  DType y_dtype = DType::kBF16;  // W8A8 / FP8: F32, F16 or BF16; W4A16: must equal x_dtype
};

// ---- The backend ----------------------------------------------------------------------------

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  // What this backend needs of K and N for each op, in words (also in the error messages).
  virtual std::string Requirements() const = 0;

  // Memory in the backend's space. CopyIn/CopyOut are ordered with the ops on the stream.
  virtual Status Alloc(size_t bytes, void** ptr) = 0;
  virtual void Free(void* ptr) = 0;
  virtual Status CopyIn(void* dst, const void* host_src, size_t bytes) = 0;
  virtual Status CopyOut(void* host_dst, const void* src, size_t bytes) = 0;
  virtual Status Synchronize() = 0;
  // CUDA: a cudaStream_t (nullptr = the legacy default stream). CPU: ignored.
  virtual Status SetStream(void* stream) { return Status::Ok(); }

  // Activation quantization; x is [M, K] of x_dtype (F32, F16, BF16).
  virtual Status QuantizeInt8PerToken(DType x_dtype, const void* x, int64_t m, int64_t k, int8_t* q, float* scale) = 0;
  virtual Status QuantizeFp8PerTensor(DType x_dtype, const void* x, int64_t m, int64_t k, float scale, uint8_t* q) = 0;
  virtual Status QuantizeFp8PerToken(DType x_dtype, const void* x, int64_t m, int64_t k, uint8_t* q, float* scale) = 0;

  // Weight preparation (once, at load).
  virtual Status PrepareInt8(const Int8WeightSource& src, std::unique_ptr<PreparedWeight>* out) = 0;
  virtual Status PrepareFp8(const Fp8WeightSource& src, std::unique_ptr<PreparedWeight>* out) = 0;
  virtual Status PrepareInt4(const Int4WeightSource& src, std::unique_ptr<PreparedWeight>* out) = 0;

  virtual Status GemmW8A8(const GemmArgs& args) = 0;
  virtual Status GemmFp8(const GemmArgs& args) = 0;
  virtual Status GemmW4A16(const GemmArgs& args) = 0;
};

struct BackendOptions {
  // CPU: worker threads (0 = hardware concurrency). CUDA: ignored.
  int threads = 0;
  // CPU: run the reference implementation instead of the fast paths ("cpu-ref").
  bool reference = false;
  // CUDA: device ordinal.
  int device = 0;
  // CUDA: workspace arena bytes reserved up front (0 = 64 MiB); grows only in Prepare/SetStream.
  size_t workspace_bytes = 0;
};

// "cpu" (fast paths: AVX-512 VNNI/BF16, else AVX2 + FMA + F16C, else portable), "cpu-avx2" (the
// AVX2 paths forced; Unavailable on a CPU without AVX2/FMA/F16C), "cpu-generic" (same driver,
// portable micro-kernels), "cpu-ref" (the reference as a backend), "cuda", "cuda-simple" (plain CUDA kernels only, no
// cuBLAS/cuBLASLt), "auto" (cuda when built with CUDA and a device is present, else cpu). Unavailable when "cuda" is
// asked for and there is none.
Status MakeBackend(std::string_view name, const BackendOptions& options, std::unique_ptr<Backend>* out);
// Whether this build has the CUDA backend and a device is visible.
bool CudaAvailable();
// Names MakeBackend accepts in this build.
std::vector<std::string> BackendNames();

// Byte size of [m, k] elements of dtype; 0 when m or k is below 1 (no such matrix).
size_t ActivationBytes(DType dtype, int64_t m, int64_t k);

}  // namespace lowbit::kernels

#endif  // LOWBIT_KERNELS_BACKEND_H_
