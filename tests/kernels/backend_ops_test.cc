// The backend-ops table test (after ggml's test-backend-ops): every op × dtype × variant × shape
// on every backend under test, compared with the CPU reference (kernels/reference.h).
//
// Agreement required:
//   * quantization ops (codes and scales) and W8A8 outputs: bit-exact. W8A8 accumulates in exact
//     int32 and every backend runs the same f32 epilogue operations, so there is no excuse.
//   * FP8 and W4A16 outputs: |y − y_ref| ≤ ulp_out(y_ref) + 4u·|y_ref| + 8·sqrt(K)·u·S, u = 2^-24,
//     S = |scales|·Σ_k |x_k·w_k| (from the reference). The reference is exact (FP8: int64) or
//     f64 (W4A16); the backend rounds the output once (one ulp of the output dtype), applies the
//     scales in f32 (4u·|y|), and sums K exact products in f32 in some order, whose error behaves
//     like a random walk of about sqrt(K)·u·S (8× margin). CUDA FP8 adds 2^-12·S: Hopper's FP8
//     MMA keeps fewer accumulator bits than f32 between cuBLASLt's promotions.
//   The NegativeControl tests show these tolerances still catch realistic bugs (one group's
//   scale wrong, act order ignored, two channels' scales swapped, one weight code off by one).
//
// Shapes: M ∈ {1, 3, 16, 17, 255, 256} × small odd (K, N) ∈ {(32,33), (200,77), (384,130)} plus
// M = 4096 × (200,77) for every variant; the Llama-3-8B (K, N) ∈ {(4096,4096), (4096,6144),
// (4096,28672), (14336,4096)} for one representative variant per op, with M ∈ {1, 17} on the CPU
// (the reference costs M·N·K scalar MACs; the whole binary runs in well under a minute on 2 cores)
// and M ∈ {1, 3, 16, 17, 255, 256, 4096} on CUDA; for big shapes with M > 3 the reference is
// computed for 4 rows (first, middle, last, one random): every op is row-independent, so a row
// subset is an exact check of those rows, and the kernel still runs the full M.
// "cpu-avx2" (the AVX2 + FMA + F16C micro-kernels, forced even on an AVX-512 CPU, so both CPU
// fast paths are tested on either kind of machine) runs the whole table like "cpu"; it is left
// out, with a note, on a CPU without AVX2. "cpu-generic" (the portable micro-kernels) runs the
// small shapes only.
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/reference.h"

#ifndef LOWBIT_TEST_BACKENDS
#define LOWBIT_TEST_BACKENDS "cpu,cpu-avx2,cpu-generic"
#endif

namespace lowbit::kernels {
namespace {

// ---- helpers --------------------------------------------------------------------------------

struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 1) {}
  uint64_t Next() {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double Uniform() { return (Next() >> 11) * (1.0 / 9007199254740992.0); }
  double Normal() {
    double u1 = std::max(Uniform(), 1e-300), u2 = Uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }
  int Int(int lo, int hi) { return lo + static_cast<int>(Next() % static_cast<uint64_t>(hi - lo + 1)); }
  // A random 8-bit code: an int8 value, or an e4m3 code that is not NaN (0x7F / 0xFF → 0x7E / 0xFE).
  uint8_t Code(bool fp8) {
    if (!fp8) return static_cast<uint8_t>(Int(-128, 127));
    const auto c = static_cast<uint8_t>(Next() & 0xFF);
    return (c & 0x7F) == 0x7F ? c ^ 1 : c;
  }
};

// "cpu-avx2" is dropped (with a note) on a CPU without AVX2/FMA/F16C, where MakeBackend refuses it.
std::vector<std::string> BackendsUnderTest() {
  std::vector<std::string> out;
  std::stringstream ss(LOWBIT_TEST_BACKENDS);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item == "cpu-avx2" && !CpuHasAvx2Kernels()) {
      std::fprintf(stderr, "note: this CPU lacks AVX2/FMA/F16C; backend cpu-avx2 not tested\n");
      continue;
    }
    out.push_back(item);
  }
  return out;
}

bool IsGpu(const std::string& name) { return name.rfind("cuda", 0) == 0; }

// Creates the backend; a missing CUDA device makes the caller skip.
Status Open(const std::string& name, std::unique_ptr<Backend>* b) {
  BackendOptions o;
  return MakeBackend(name, o, b);
}

// A buffer in backend memory.
class Buf {
 public:
  Buf(Backend* b, size_t bytes) : b_(b), bytes_(bytes) {
    Status s = b->Alloc(std::max<size_t>(bytes, 1), &p_);
    if (!s.ok()) p_ = nullptr;
  }
  Buf(Backend* b, const void* host, size_t bytes) : Buf(b, bytes) {
    if (p_ && bytes) (void)b->CopyIn(p_, host, bytes);
  }
  ~Buf() {
    if (p_) b_->Free(p_);
  }
  Buf(const Buf&) = delete;
  void* get() const { return p_; }
  template <class T>
  std::vector<T> Read() const {
    std::vector<T> v(bytes_ / sizeof(T));
    (void)b_->CopyOut(v.data(), p_, bytes_);
    (void)b_->Synchronize();
    return v;
  }

 private:
  Backend* b_;
  size_t bytes_;
  void* p_ = nullptr;
};

// Activations with a few outlier channels, in dtype (bytes).
std::vector<uint8_t> MakeActivations(DType dt, int64_t m, int64_t k, Rng& rng) {
  std::vector<uint8_t> out(ActivationBytes(dt, m, k));
  for (int64_t r = 0; r < m; ++r)
    for (int64_t c = 0; c < k; ++c) {
      double v = rng.Normal();
      if (c % 61 == 7) v *= 20.0;
      ref::StoreFloat(dt, out.data(), r * k + c, static_cast<float>(v));
    }
  return out;
}

std::vector<uint8_t> ScalesIn(DType dt, const std::vector<float>& f) {
  std::vector<uint8_t> out(f.size() * DTypeSize(dt));
  for (size_t i = 0; i < f.size(); ++i) ref::StoreFloat(dt, out.data(), static_cast<int64_t>(i), f[i]);
  return out;
}

std::vector<float> RandomScales(int64_t n, Rng& rng, float base) {
  std::vector<float> s(n);
  for (auto& v : s) v = RoundToDType(base * static_cast<float>(0.5 + rng.Uniform()), DType::kBF16);
  return s;
}

double UlpOut(DType dt, double v) {
  int mb = dt == DType::kF32 ? 23 : dt == DType::kF16 ? 10 : 7;
  int emin = dt == DType::kF16 ? -14 : -126;
  int e = v == 0.0 ? emin : std::max(emin, static_cast<int>(std::floor(std::log2(std::fabs(v)))));
  return std::ldexp(1.0, e - mb);
}

// Compares two [rows, n] float outputs of dtype under the stated tolerance; "" when they agree.
std::string CompareFloat(DType dt, const void* got, const void* want, const float* abs_sum, int64_t rows, int64_t n,
                         int64_t k, double extra_rel_s) {
  int64_t bad = 0;
  std::string first;
  const double u = std::ldexp(1.0, -24);
  for (int64_t i = 0; i < rows * n; ++i) {
    const double g = ref::LoadFloat(dt, got, i), w = ref::LoadFloat(dt, want, i);
    const double tol =
        UlpOut(dt, w) + 4 * u * std::fabs(w) + (8 * std::sqrt(static_cast<double>(k)) * u + extra_rel_s) * abs_sum[i];
    if (!(std::fabs(g - w) <= tol)) {
      if (bad++ == 0) {
        std::ostringstream os;
        os << "first mismatch at [" << i / n << ", " << i % n << "]: got " << g << ", reference " << w << ", |diff| "
           << std::fabs(g - w) << " > tolerance " << tol;
        first = os.str();
      }
    }
  }
  if (bad == 0) return "";
  return std::to_string(bad) + " of " + std::to_string(rows * n) + " outside tolerance; " + first;
}

std::string CompareBytes(const void* got, const void* want, size_t bytes, size_t elem, const char* what) {
  const uint8_t* g = static_cast<const uint8_t*>(got);
  const uint8_t* w = static_cast<const uint8_t*>(want);
  for (size_t i = 0; i < bytes; ++i)
    if (g[i] != w[i]) {
      std::ostringstream os;
      os << what << " differ from the reference at element " << i / elem << " (byte " << i << ": got 0x" << std::hex
         << int(g[i]) << ", want 0x" << int(w[i]) << ")";
      return os.str();
    }
  return "";
}

struct Shape {
  int64_t m, k, n;
  bool big;
};

// LOWBIT_TEST_SHAPES=small leaves out the Llama-3-8B shapes: for slow runs of the whole table,
// such as compute-sanitizer's memcheck on the device (scripts/device-kernels.sh).
bool SmallShapesOnly() {
  const char* v = std::getenv("LOWBIT_TEST_SHAPES");
  return v != nullptr && std::string(v) == "small";
}

// any_k: the op's CPU kernels take any K (W8A8, FP8), so the CPU backends also get K = 37 — not
// a multiple of the 4- (int8) or 2-element (FP8) k-groups their weight layouts pack.
std::vector<Shape> Shapes(const std::string& backend, bool representative, bool any_k) {
  std::vector<Shape> s;
  // CUDA adds M = 12: the weight-streaming kernels' upper token rows (8..15) partly present; and
  // M = 6: the split-K int4 GEMV (M ≥ 5) without them.
  std::vector<int64_t> small_ms = {1, 3, 16, 17, 255, 256};
  if (IsGpu(backend)) small_ms.insert(small_ms.begin() + 2, {6, 12});
  const int64_t small_kn[][2] = {{32, 33}, {200, 77}, {384, 130}};
  for (auto& kn : small_kn)
    for (int64_t m : small_ms) s.push_back({m, kn[0], kn[1], false});
  if (any_k && !IsGpu(backend)) {
    for (int64_t m : {1, 3, 17}) s.push_back({m, 37, 19, false});
    // More than one k-block of the CPU kernels (256 k-groups) with a short last one, N ragged: the
    // AVX2 W8A8 layout stores each k-block sub-panel by sub-panel. M = 2 / 3 / 6 / 7 run every
    // row tile (2-, 3- and 4-row, and 4 + 2 / 4 + 3).
    for (int64_t m : {1, 2, 3, 6, 7}) s.push_back({m, 1101, 45, false});
  }
  // CUDA: K and N multiples of 16 reach cuBLASLt FP8 (no bias only); no other shape here does.
  // N = 48 / 80 leave the last 64-wide N tile partial (one / two CTAs of the 1x8 cluster at M ≤ 64).
  // K = 320 ends inside the Hopper CUTLASS kernels' 128-wide k-tile: (320, 64) for W8A8 / FP8
  // (N % 16), (320, 56) for W4A16 (with group 128: a half last group) and for the int4 GEMV with N
  // ending inside its 16-row block.
  // M on both sides of the CUTLASS tile boundaries: 64-row tiles up to M = 128, 128-row tiles on
  // a 2-CTA cluster above (M = 300: an odd number of row tiles).
  // K = 1040 (K % 64 == 16: the 8-bit GEMVs' last step partly past K) with N = 130 ragged: split
  // into many slices, the last one short.
  if (IsGpu(backend)) {
    for (int64_t m : {6, 12}) s.push_back({m, 1040, 130, false});
    for (int64_t m : {1, 3, 6, 16, 17, 64, 65, 128, 129, 255, 256, 300, 4096}) {
      s.push_back({m, 256, 48, false});
      s.push_back({m, 256, 80, false});  // N past one 64-wide tile: two CTAs of a 1x8 cluster, the second partial
      s.push_back({m, 320, 56, false});
      s.push_back({m, 320, 64, false});
    }
  }
  s.push_back({4096, 200, 77, false});
  if (!representative || backend == "cpu-generic" || SmallShapesOnly()) return s;
  const int64_t big_kn[][2] = {{4096, 4096}, {4096, 6144}, {4096, 28672}, {14336, 4096}};
  std::vector<int64_t> ms =
      IsGpu(backend) ? std::vector<int64_t>{1, 3, 16, 17, 255, 256, 4096} : std::vector<int64_t>{1, 17};
  for (auto& kn : big_kn)
    for (int64_t m : ms) s.push_back({m, kn[0], kn[1], true});
  return s;
}

// Shapes grouped by (K, N), so a weight is generated and prepared once for all its M.
struct ShapeGroup {
  int64_t k, n;
  bool big;
  std::vector<int64_t> ms;
};
std::vector<ShapeGroup> Groups(const std::string& backend, bool any_k) {
  std::vector<ShapeGroup> g;
  for (bool representative : {false, true})
    for (const Shape& s : Shapes(backend, representative, any_k)) {
      if (s.big != representative) continue;
      auto it = std::find_if(g.begin(), g.end(), [&](const ShapeGroup& x) { return x.k == s.k && x.n == s.n; });
      if (it == g.end())
        g.push_back({s.k, s.n, s.big, {s.m}});
      else
        it->ms.push_back(s.m);
    }
  return g;
}

// Rows the reference is computed for: all, or 8 sampled rows for big shapes with M > 17.
std::vector<int64_t> RefRows(const Shape& sh, Rng& rng) {
  std::vector<int64_t> rows;
  if (!sh.big || sh.m <= 3) {
    for (int64_t r = 0; r < sh.m; ++r) rows.push_back(r);
    return rows;
  }
  rows = {0, sh.m / 2, sh.m - 1};
  while (rows.size() < 4) rows.push_back(static_cast<int64_t>(rng.Next() % static_cast<uint64_t>(sh.m)));
  std::sort(rows.begin(), rows.end());
  rows.erase(std::unique(rows.begin(), rows.end()), rows.end());
  return rows;
}

template <class T>
std::vector<T> GatherRows(const std::vector<T>& v, int64_t cols, const std::vector<int64_t>& rows) {
  std::vector<T> out;
  out.reserve(rows.size() * cols);
  for (int64_t r : rows) out.insert(out.end(), v.begin() + r * cols, v.begin() + (r + 1) * cols);
  return out;
}

std::string ShapeName(const Shape& s) {
  return "M=" + std::to_string(s.m) + " K=" + std::to_string(s.k) + " N=" + std::to_string(s.n);
}

const DType kActTypes[] = {DType::kF32, DType::kF16, DType::kBF16};

// Round-half-even, saturation and non-finite cases planted in the activations of the
// quantization tests.
void PlantTies(DType dt, std::vector<uint8_t>& x, int64_t m, int64_t k) {
  if (k < 8 || m < 2) return;
  // Row 0: absmax 127 → scale 1: ties 0.5, 1.5, 2.5, -0.5, -2.5 (int8 round half to even).
  const float r0[] = {127.0f, 0.5f, 1.5f, 2.5f, -0.5f, -2.5f, -127.0f, 3.5f};
  // Row 1: absmax 448 → fp8 scale 1: E4M3 midpoints 1.0625, 17, 9.5, -0.0029296875 (2.5·2^-10).
  const float r1[] = {448.0f, 1.0625f, 17.0f, 9.5f, -0.0029296875f, 0.0f, 240.0f, -448.0f};
  for (int i = 0; i < 8; ++i) {
    ref::StoreFloat(dt, x.data(), i, r0[i]);
    ref::StoreFloat(dt, x.data(), k + i, r1[i]);
  }
  if (m >= 3)  // row 2 all zero: scale 1
    for (int64_t c = 0; c < k; ++c) ref::StoreFloat(dt, x.data(), 2 * k + c, 0.0f);
  // Non-finite rows (per token: scale NaN, codes 0; per tensor: a NaN code, ±448): row 3 a NaN
  // mid-row and a negative one in column 1, row 4 -inf in the last column (the vector loops' tail when K is not a multiple of
  // their width), row 5 +inf in the first.
  if (m >= 6) {
    ref::StoreFloat(dt, x.data(), 3 * k + k / 2, std::numeric_limits<float>::quiet_NaN());
    // A NaN with its sign bit set (x86's default NaN, what 0/0 gives): per tensor its code keeps
    // the sign (0xFF), as the reference's does.
    ref::StoreFloat(dt, x.data(), 3 * k + 1, -std::numeric_limits<float>::quiet_NaN());
    ref::StoreFloat(dt, x.data(), 4 * k + k - 1, -std::numeric_limits<float>::infinity());
    ref::StoreFloat(dt, x.data(), 5 * k, std::numeric_limits<float>::infinity());
  }
}

#define OPEN_OR_SKIP(name, b)                                                                                      \
  std::unique_ptr<Backend> b;                                                                                      \
  {                                                                                                                \
    Status _s = Open(name, &b);                                                                                    \
    if (_s.code() == StatusCode::kUnavailable && IsGpu(name)) GTEST_SKIP() << "no CUDA device: " << _s.ToString(); \
    ASSERT_TRUE(_s.ok()) << _s.ToString();                                                                         \
  }

// ---- quantization ---------------------------------------------------------------------------

enum class QuantOp { kInt8Token, kFp8Tensor, kFp8Token };

void RunQuantTable(QuantOp op) {
  for (const std::string& name : BackendsUnderTest()) {
    OPEN_OR_SKIP(name, b);
    Rng rng(11);
    std::vector<Shape> shapes = Shapes(name, false, /*any_k=*/true);
    shapes.push_back({3, 4096, 0, false});
    shapes.push_back({17, 14336, 0, false});
    shapes.push_back({1, 1, 0, false});
    // K = 37 (not a multiple of 8) and K = 16392 (past the longest row the CUDA vector kernel
    // keeps in registers) take the CUDA scalar kernels for f16 / bf16 too.
    shapes.push_back({3, 37, 0, false});
    shapes.push_back({2, 16392, 0, false});
    for (const Shape& sh : shapes)
      for (DType dt : kActTypes) {
        const int64_t m = sh.m, k = sh.k;
        std::vector<uint8_t> x = MakeActivations(dt, m, k, rng);
        PlantTies(dt, x, m, k);
        Buf dx(b.get(), x.data(), x.size()), dq(b.get(), m * k), ds(b.get(), m * sizeof(float));
        std::vector<uint8_t> want_q(m * k);
        std::vector<float> want_s(m);
        Status st;
        const float static_scale = 20.0f / kFp8E4M3Max;  // outlier channels (±~60) saturate
        if (op == QuantOp::kInt8Token) {
          st = b->QuantizeInt8PerToken(dt, dx.get(), m, k, static_cast<int8_t*>(dq.get()),
                                       static_cast<float*>(ds.get()));
          ref::QuantizeInt8PerToken(dt, x.data(), m, k, reinterpret_cast<int8_t*>(want_q.data()), want_s.data());
        } else if (op == QuantOp::kFp8Tensor) {
          st = b->QuantizeFp8PerTensor(dt, dx.get(), m, k, static_scale, static_cast<uint8_t*>(dq.get()));
          ref::QuantizeFp8PerTensor(dt, x.data(), m, k, static_scale, want_q.data());
        } else {
          st = b->QuantizeFp8PerToken(dt, dx.get(), m, k, static_cast<uint8_t*>(dq.get()),
                                      static_cast<float*>(ds.get()));
          ref::QuantizeFp8PerToken(dt, x.data(), m, k, want_q.data(), want_s.data());
        }
        const std::string ctx = name + " " + ShapeName(sh) + " x=" + std::string(DTypeName(dt));
        ASSERT_TRUE(st.ok()) << ctx << ": " << st.ToString();
        auto got_q = dq.Read<uint8_t>();
        std::string d = CompareBytes(got_q.data(), want_q.data(), want_q.size(), 1, "codes");
        EXPECT_TRUE(d.empty()) << ctx << ": " << d;
        if (op != QuantOp::kFp8Tensor) {
          auto got_s = ds.Read<float>();
          d = CompareBytes(got_s.data(), want_s.data(), want_s.size() * 4, 4, "scales");
          EXPECT_TRUE(d.empty()) << ctx << ": " << d;
        }
      }
  }
}

TEST(BackendOps, QuantizeInt8PerToken) { RunQuantTable(QuantOp::kInt8Token); }
TEST(BackendOps, QuantizeFp8PerTensor) { RunQuantTable(QuantOp::kFp8Tensor); }
TEST(BackendOps, QuantizeFp8PerToken) { RunQuantTable(QuantOp::kFp8Token); }

// ---- W8A8 and FP8 GEMMs ---------------------------------------------------------------------

struct ScaledVariant {
  DType out;
  bool per_token;  // per-token × per-channel, else per-tensor × per-tensor
  bool bias;
};

std::vector<ScaledVariant> ScaledVariants() {
  std::vector<ScaledVariant> v;
  for (DType out : kActTypes)
    for (bool pt : {false, true})
      for (bool bias : {false, true}) v.push_back({out, pt, bias});
  return v;
}
const ScaledVariant kRepresentativeScaled{DType::kBF16, true, true};

// The arguments of a W8A8 / FP8 GEMM on device buffers (x: int8 or E4M3 codes, x_scale: f32).
GemmArgs ScaledArgs(bool fp8, int64_t m, const Buf& x, const Buf& x_scale, size_t x_scale_count,
                    const PreparedWeight* w, const float* bias, const Buf& y, DType y_dtype) {
  GemmArgs a;
  a.m = m;
  a.x = x.get();
  a.x_dtype = fp8 ? DType::kF8E4M3 : DType::kI8;
  a.x_scale = static_cast<const float*>(x_scale.get());
  a.x_scale_count = static_cast<int64_t>(x_scale_count);
  a.w = w;
  a.bias = bias;
  a.y = y.get();
  a.y_dtype = y_dtype;
  return a;
}

void RunScaledGemmTable(bool fp8) {
  for (const std::string& name : BackendsUnderTest()) {
    OPEN_OR_SKIP(name, b);
    Rng rng(fp8 ? 23 : 17);
    for (const ShapeGroup& grp : Groups(name, /*any_k=*/true)) {
      const int64_t k = grp.k, n = grp.n;
      std::vector<ScaledVariant> variants =
          grp.big ? std::vector<ScaledVariant>{kRepresentativeScaled} : ScaledVariants();
      // FP8 at the big shapes also with f32 output, whose ulp does not hide accumulation error
      // over long K (the GPU's FP8 mma keeps fewer bits than f32 between promotions).
      if (grp.big && fp8) variants.push_back({DType::kF32, true, false});
      std::vector<uint8_t> w(n * k);
      for (auto& v : w) v = rng.Code(fp8);
      std::vector<float> bias(n);
      for (auto& v : bias) v = static_cast<float>(rng.Normal());
      Buf dbias(b.get(), bias.data(), n * 4);
      for (bool pt : {false, true}) {
        if (std::none_of(variants.begin(), variants.end(), [&](const ScaledVariant& v) { return v.per_token == pt; }))
          continue;
        std::vector<float> ws = RandomScales(pt ? n : 1, rng, fp8 ? 0.01f : 0.002f);
        std::vector<uint8_t> ws_bf16 = ScalesIn(DType::kBF16, ws);  // checkpoint scales are bf16
        const ScaleView wsv{ws_bf16.data(), DType::kBF16, static_cast<int64_t>(ws.size())};
        std::unique_ptr<PreparedWeight> pw;
        Status st = fp8 ? b->PrepareFp8({w.data(), n, k, wsv}, &pw)
                        : b->PrepareInt8({reinterpret_cast<const int8_t*>(w.data()), n, k, wsv}, &pw);
        ASSERT_TRUE(st.ok()) << name << " K=" << k << " N=" << n << ": prepare: " << st.ToString();
        for (int64_t m : grp.ms) {
          const Shape sh{m, k, n, grp.big};
          std::vector<uint8_t> x(m * k);
          for (auto& v : x) v = rng.Code(fp8);
          std::vector<float> xs = RandomScales(pt ? m : 1, rng, fp8 ? 0.02f : 0.01f);
          Buf dx(b.get(), x.data(), x.size()), dxs(b.get(), xs.data(), xs.size() * 4);
          for (const ScaledVariant& v : variants) {
            if (v.per_token != pt) continue;
            const std::string ctx = name + (fp8 ? " GemmFp8 " : " GemmW8A8 ") + ShapeName(sh) +
                                    " out=" + std::string(DTypeName(v.out)) +
                                    (pt ? " per-token×per-channel" : " per-tensor") + (v.bias ? " +bias" : "");
            Buf dy(b.get(), ActivationBytes(v.out, m, n));
            const float* bias_p = v.bias ? static_cast<const float*>(dbias.get()) : nullptr;
            GemmArgs a = ScaledArgs(fp8, m, dx, dxs, xs.size(), pw.get(), bias_p, dy, v.out);
            st = fp8 ? b->GemmFp8(a) : b->GemmW8A8(a);
            ASSERT_TRUE(st.ok()) << ctx << ": " << st.ToString();
            std::vector<uint8_t> got = dy.Read<uint8_t>();
            // Reference on the (sampled) rows.
            std::vector<int64_t> rows = RefRows(sh, rng);
            const int64_t mr = static_cast<int64_t>(rows.size());
            std::vector<uint8_t> xr = GatherRows(x, k, rows);
            std::vector<float> xsr = pt ? GatherRows(xs, 1, rows) : xs;
            std::vector<uint8_t> want(ActivationBytes(v.out, mr, n));
            std::vector<float> abs_sum(mr * n);
            const size_t es = DTypeSize(v.out);
            std::vector<uint8_t> got_rows = GatherRows(got, n * static_cast<int64_t>(es), rows);
            std::string d;
            if (fp8) {
              ref::GemmFp8(mr, xr.data(), xsr.data(), static_cast<int64_t>(xsr.size()), {w.data(), n, k, wsv},
                           a.bias ? bias.data() : nullptr, v.out, want.data(), abs_sum.data());
              d = CompareFloat(v.out, got_rows.data(), want.data(), abs_sum.data(), mr, n, k,
                               IsGpu(name) ? std::ldexp(1.0, -12) : 0.0);
            } else {
              ref::GemmW8A8(mr, reinterpret_cast<const int8_t*>(xr.data()), xsr.data(),
                            static_cast<int64_t>(xsr.size()), {reinterpret_cast<const int8_t*>(w.data()), n, k, wsv},
                            a.bias ? bias.data() : nullptr, v.out, want.data());
              d = CompareBytes(got_rows.data(), want.data(), want.size(), es, "outputs");
            }
            EXPECT_TRUE(d.empty()) << ctx << ": " << d;
          }
        }
      }
    }
  }
}

TEST(BackendOps, GemmW8A8) { RunScaledGemmTable(false); }
TEST(BackendOps, GemmFp8) { RunScaledGemmTable(true); }

// The CUDA backend plans each cuBLASLt case and shape once and keeps the plan: the same shape
// again, with new weights, scales and activations (so new scale pointers), must compute the new
// product. W8A8 at M = 17 reaches cuBLASLt int8 (the CUTLASS kernel instead on sm_90, unless
// LOWBIT_CUDA_NO_CUTLASS=1, as scripts/device-kernels.sh also runs it), FP8 at K = 256, N = 48 cuBLASLt FP8 (per
// tensor, and per token × per channel on sm_90).
TEST(BackendOps, RepeatedShapesReuseCublasLtPlansWithNewScales) {
  bool any = false;
  for (const std::string& name : BackendsUnderTest()) {
    if (!IsGpu(name)) continue;
    any = true;
    OPEN_OR_SKIP(name, b);
    Rng rng(31);
    const int64_t m = 17, k = 256, n = 48;
    for (bool fp8 : {false, true})
      for (bool pt : {false, true})
        for (int round = 0; round < 3; ++round) {
          const std::string ctx = name + (fp8 ? " GemmFp8" : " GemmW8A8") + (pt ? " per-token" : " per-tensor") +
                                  " round " + std::to_string(round);
          std::vector<uint8_t> w(n * k), x(m * k);
          for (auto* v : {&w, &x})
            for (auto& e : *v) e = rng.Code(fp8);
          std::vector<uint8_t> ws_bf16 = ScalesIn(DType::kBF16, RandomScales(pt ? n : 1, rng, 0.01f));
          const ScaleView wsv{ws_bf16.data(), DType::kBF16, pt ? n : 1};
          std::vector<float> xs = RandomScales(pt ? m : 1, rng, 0.02f);
          std::unique_ptr<PreparedWeight> pw;
          Status st = fp8 ? b->PrepareFp8({w.data(), n, k, wsv}, &pw)
                          : b->PrepareInt8({reinterpret_cast<const int8_t*>(w.data()), n, k, wsv}, &pw);
          ASSERT_TRUE(st.ok()) << ctx << ": " << st.ToString();
          Buf dx(b.get(), x.data(), x.size()), dxs(b.get(), xs.data(), xs.size() * 4);
          Buf dy(b.get(), ActivationBytes(DType::kBF16, m, n));
          GemmArgs a = ScaledArgs(fp8, m, dx, dxs, xs.size(), pw.get(), nullptr, dy, DType::kBF16);
          st = fp8 ? b->GemmFp8(a) : b->GemmW8A8(a);
          ASSERT_TRUE(st.ok()) << ctx << ": " << st.ToString();
          std::vector<uint8_t> got = dy.Read<uint8_t>(), want(ActivationBytes(DType::kBF16, m, n));
          std::string d;
          if (fp8) {
            std::vector<float> abs_sum(m * n);
            ref::GemmFp8(m, x.data(), xs.data(), a.x_scale_count, {w.data(), n, k, wsv}, nullptr, DType::kBF16,
                         want.data(), abs_sum.data());
            d = CompareFloat(DType::kBF16, got.data(), want.data(), abs_sum.data(), m, n, k, std::ldexp(1.0, -12));
          } else {
            ref::GemmW8A8(m, reinterpret_cast<const int8_t*>(x.data()), xs.data(), a.x_scale_count,
                          {reinterpret_cast<const int8_t*>(w.data()), n, k, wsv}, nullptr, DType::kBF16, want.data());
            d = CompareBytes(got.data(), want.data(), want.size(), 2, "outputs");
          }
          EXPECT_TRUE(d.empty()) << ctx << ": " << d;
        }
  }
  if (!any) GTEST_SKIP() << "no CUDA backend under test";
}

// ---- W4A16 ----------------------------------------------------------------------------------

struct W4Variant {
  int64_t group_size;  // 0 = per channel
  bool asym;
  bool act_order;
  bool f32_scales = false;  // f32 scales that no f16 / bf16 holds, else scales in the activation type
};

struct Int4Checkpoint {
  std::vector<int32_t> packed, zp, g_idx;
  std::vector<uint8_t> scale;  // in scale_dtype
  DType scale_dtype;
  std::vector<float> scale_f;
  Int4WeightSource Source(int64_t n, int64_t k, int64_t gs) const {
    Int4WeightSource s;
    s.weight_packed = packed.data();
    s.n = n;
    s.k = k;
    s.group_size = gs;
    s.scale = {scale.data(), scale_dtype, static_cast<int64_t>(scale_f.size())};
    s.zero_point_packed = zp.empty() ? nullptr : zp.data();
    s.g_idx = g_idx.empty() ? nullptr : g_idx.data();
    return s;
  }
};

Int4Checkpoint MakeInt4(int64_t n, int64_t k, const W4Variant& v, DType sdt, Rng& rng) {
  Int4Checkpoint c;
  const int64_t words = (k + 7) / 8;
  c.packed.resize(n * words);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t wi = 0; wi < words; ++wi) {
      uint32_t word = static_cast<uint32_t>(rng.Next());
      // Zero the padding codes past K (compressed-tensors pads with the code for 0, i.e. 8).
      for (int64_t j = 0; j < 8; ++j)
        if (wi * 8 + j >= k) word = (word & ~(15u << (4 * j))) | (8u << (4 * j));
      c.packed[r * words + wi] = static_cast<int32_t>(word);
    }
  const int64_t gs = v.group_size == 0 || v.group_size >= k ? k : v.group_size;
  const int64_t groups = (k + gs - 1) / gs;
  c.scale_f = RandomScales(n * groups, rng, 0.02f);
  for (auto& s : c.scale_f) s = v.f32_scales ? std::nextafter(s, 1.0f) : RoundToDType(s, sdt);
  c.scale_dtype = v.f32_scales ? DType::kF32 : sdt;
  c.scale = ScalesIn(c.scale_dtype, c.scale_f);
  if (v.asym) {
    c.zp.resize(((n + 7) / 8) * groups);
    for (auto& z : c.zp) z = static_cast<int32_t>(rng.Next());
  }
  if (v.act_order && gs < k) {
    std::vector<int32_t> perm(k);
    for (int64_t i = 0; i < k; ++i) perm[i] = static_cast<int32_t>(i);
    for (int64_t i = k - 1; i > 0; --i) std::swap(perm[i], perm[rng.Next() % static_cast<uint64_t>(i + 1)]);
    c.g_idx.resize(k);
    for (int64_t j = 0; j < k; ++j) c.g_idx[perm[j]] = static_cast<int32_t>(j / gs);
  }
  return c;
}

std::vector<W4Variant> W4Variants() {
  // The last: symmetric group-128 weights whose scales need f32 (CUDA: not the packed-dequant
  // GEMV, not the CUTLASS kernel).
  return {{128, false, false}, {128, true, false}, {0, false, false},        {0, true, false},
          {128, false, true},  {128, true, true},  {128, false, false, true}};
}

void RunW4Table() {
  for (const std::string& name : BackendsUnderTest()) {
    OPEN_OR_SKIP(name, b);
    Rng rng(31);
    for (const ShapeGroup& grp : Groups(name, /*any_k=*/false)) {
      const int64_t k = grp.k, n = grp.n;
      for (DType dt : {DType::kF16, DType::kBF16}) {
        if (grp.big && dt != DType::kBF16) continue;
        std::vector<float> bias(n);
        for (auto& v : bias) v = static_cast<float>(rng.Normal());
        Buf dbias(b.get(), bias.data(), n * 4);
        std::vector<W4Variant> variants = W4Variants();
        // Big shapes: group 128, asymmetric, act order; on CUDA also group 128 symmetric (the common
        // W4A16 checkpoint), which takes the packed-dequantization GEMV and the CUTLASS kernel.
        if (grp.big) variants = {{128, true, true}};
        if (grp.big && IsGpu(name)) variants.push_back({128, false, false});
        for (const W4Variant& v : variants) {
          Int4Checkpoint ck = MakeInt4(n, k, v, dt, rng);
          const Int4WeightSource src = ck.Source(n, k, v.group_size);
          const bool with_bias = (n % 2) == 1 || grp.big;
          std::unique_ptr<PreparedWeight> pw;
          Status st = b->PrepareInt4(src, &pw);
          ASSERT_TRUE(st.ok()) << name << " K=" << k << " N=" << n << ": prepare: " << st.ToString();
          for (int64_t m : grp.ms) {
            const Shape sh{m, k, n, grp.big};
            const std::string ctx = name + " GemmW4A16 " + ShapeName(sh) + " x=" + std::string(DTypeName(dt)) +
                                    (v.group_size ? " g128" : " per-channel") + (v.asym ? " asym" : " sym") +
                                    (v.act_order ? " act-order" : "") + (v.f32_scales ? " f32-scales" : "") +
                                    (with_bias ? " +bias" : "");
            std::vector<uint8_t> x = MakeActivations(dt, m, k, rng);
            Buf dx(b.get(), x.data(), x.size()), dy(b.get(), ActivationBytes(dt, m, n));
            GemmArgs a;
            a.m = m;
            a.x = dx.get();
            a.x_dtype = dt;
            a.w = pw.get();
            a.bias = with_bias ? static_cast<const float*>(dbias.get()) : nullptr;
            a.y = dy.get();
            a.y_dtype = dt;
            st = b->GemmW4A16(a);
            ASSERT_TRUE(st.ok()) << ctx << ": " << st.ToString();
            std::vector<uint8_t> got = dy.Read<uint8_t>();
            std::vector<int64_t> rows = RefRows(sh, rng);
            const int64_t mr = static_cast<int64_t>(rows.size());
            std::vector<uint8_t> xr = GatherRows(x, k * 2, rows);
            std::vector<uint8_t> got_rows = GatherRows(got, n * 2, rows);
            std::vector<uint8_t> want(mr * n * 2);
            std::vector<float> abs_sum(mr * n);
            ref::GemmW4A16(mr, dt, xr.data(), src, with_bias ? bias.data() : nullptr, want.data(), abs_sum.data());
            std::string d = CompareFloat(dt, got_rows.data(), want.data(), abs_sum.data(), mr, n, k, 0.0);
            EXPECT_TRUE(d.empty()) << ctx << ": " << d;
          }
        }
      }
    }
  }
}

TEST(BackendOps, GemmW4A16) { RunW4Table(); }

// The same call three times gives the same bits: on CUDA at M = 16, K = N = 4096 the split-K
// GEMVs (K in slices by the SM count, the last block of each row tile adding them), whose per-tile
// tickets each launch must leave as it found them; a wrong ticket picks a block that adds missing
// slices. W4A16 and FP8 (float sums, the order must be fixed too); W8A8 shares the mechanism.
TEST(BackendOps, SplitKGemvsRepeatBitIdentically) {
  for (const std::string& name : BackendsUnderTest()) {
    OPEN_OR_SKIP(name, b);
    Rng rng(47);
    const int64_t m = 16, k = 4096, n = 4096;
    std::vector<float> bias(n);
    for (auto& e : bias) e = static_cast<float>(rng.Normal());
    Buf dbias(b.get(), bias.data(), n * 4);
    // W4A16: bf16 activations; FP8: e4m3 codes (no NaN) with per-token and per-channel scales.
    const W4Variant v{128, false, false};
    Int4Checkpoint ck = MakeInt4(n, k, v, DType::kBF16, rng);
    std::vector<uint8_t> x16 = MakeActivations(DType::kBF16, m, k, rng);
    std::vector<uint8_t> w8(n * k), x8(m * k);
    for (auto* vec : {&w8, &x8})
      for (auto& e : *vec) e = rng.Code(true);
    std::vector<float> ws = RandomScales(n, rng, 0.01f), xs = RandomScales(m, rng, 0.02f);
    for (bool fp8 : {false, true}) {
      const std::string ctx = name + (fp8 ? " GemmFp8" : " GemmW4A16");
      std::unique_ptr<PreparedWeight> pw;
      Status st = fp8 ? b->PrepareFp8({w8.data(), n, k, {ws.data(), DType::kF32, n}}, &pw)
                      : b->PrepareInt4(ck.Source(n, k, v.group_size), &pw);
      ASSERT_TRUE(st.ok()) << ctx << ": " << st.ToString();
      const std::vector<uint8_t>& x = fp8 ? x8 : x16;
      Buf dx(b.get(), x.data(), x.size()), dxs(b.get(), xs.data(), xs.size() * 4);
      std::vector<uint16_t> first;
      // Each round's output starts as NaN (0xFFFF, which no finite result is), so a round that left
      // outputs unwritten (a wrong ticket: no block of a tile believes it is last) cannot pass on
      // the previous round's bits in a reused allocation.
      const std::vector<uint16_t> poison(m * n, 0xFFFF);
      for (int round = 0; round < 3; ++round) {
        Buf dy(b.get(), poison.data(), poison.size() * 2);
        GemmArgs a =
            ScaledArgs(true, m, dx, dxs, m, pw.get(), static_cast<const float*>(dbias.get()), dy, DType::kBF16);
        if (!fp8) a.x_dtype = DType::kBF16, a.x_scale = nullptr, a.x_scale_count = 0;
        st = fp8 ? b->GemmFp8(a) : b->GemmW4A16(a);
        ASSERT_TRUE(st.ok()) << ctx << " round " << round << ": " << st.ToString();
        std::vector<uint16_t> got = dy.Read<uint16_t>();
        EXPECT_EQ(std::count(got.begin(), got.end(), uint16_t{0xFFFF}), 0) << ctx << ": outputs left unwritten";
        if (round == 0)
          first = got;
        else
          EXPECT_EQ(CompareBytes(got.data(), first.data(), first.size() * 2, 2, "outputs"), "")
              << ctx << ": round " << round << " differs from round 0";
      }
    }
  }
}

// ---- validation -----------------------------------------------------------------------------

bool Contains(const Status& s, const char* what) { return s.message().find(what) != std::string::npos; }

TEST(BackendOps, ValidationErrorsNameTheProblem) {
  for (const std::string& name : BackendsUnderTest()) {
    OPEN_OR_SKIP(name, b);
    float scale = 1.0f;
    std::vector<int8_t> w(64 * 32, 1);
    Int8WeightSource src{w.data(), 64, 32, {&scale, DType::kF32, 1}};
    std::unique_ptr<PreparedWeight> pw;
    ASSERT_TRUE(b->PrepareInt8(src, &pw).ok());
    Int8WeightSource bad = src;
    bad.scale.count = 7;
    std::unique_ptr<PreparedWeight> pw2;
    Status st = b->PrepareInt8(bad, &pw2);
    EXPECT_TRUE(st.code() == StatusCode::kInvalidArgument && Contains(st, "7 elements")) << st.ToString();
    Buf dx(b.get(), 64 * 32), dy(b.get(), 64 * 64 * 4), ds(b.get(), 64 * 4);
    GemmArgs a;
    a.m = 4;
    a.x = dx.get();
    a.x_dtype = DType::kBF16;
    a.x_scale = static_cast<const float*>(ds.get());
    a.x_scale_count = 4;
    a.w = pw.get();
    a.y = dy.get();
    a.y_dtype = DType::kF32;
    st = b->GemmW8A8(a);
    EXPECT_TRUE(st.code() == StatusCode::kInvalidArgument && Contains(st, "activation dtype BF16 must be I8"))
        << st.ToString();
    a.x_dtype = DType::kI8;
    a.x_scale_count = 3;
    st = b->GemmW8A8(a);
    EXPECT_TRUE(Contains(st, "x_scale has 3 elements, expected 1 or M = 4")) << st.ToString();
    a.x_scale_count = 4;
    a.y_dtype = DType::kI32;
    st = b->GemmW8A8(a);
    EXPECT_TRUE(Contains(st, "output dtype I32")) << st.ToString();
    a.y_dtype = DType::kF32;
    st = b->GemmFp8(a);
    EXPECT_TRUE(Contains(st, "another kind")) << st.ToString();
    // The CUDA kernels read int8 activations as words: a misaligned x is refused, not a fault;
    // the CPU backends take any address.
    a.x = static_cast<const char*>(dx.get()) + 1;
    st = b->GemmW8A8(a);
    if (name.rfind("cuda", 0) == 0) {
      EXPECT_TRUE(st.code() == StatusCode::kInvalidArgument && Contains(st, "not 4-byte aligned")) << st.ToString();
    } else {
      EXPECT_TRUE(st.ok()) << st.ToString();
    }
    a.x = dx.get();
    a.m = 0;
    st = b->GemmW8A8(a);
    EXPECT_TRUE(Contains(st, "M = 0")) << st.ToString();
    // A g_idx that cannot be turned into a permutation (unbalanced groups).
    std::vector<int32_t> packed(8 * 256 / 8, 0);
    std::vector<float> sc(8 * 2, 1.0f);
    std::vector<int32_t> g_idx(256, 0);
    Int4WeightSource s4;
    s4.weight_packed = packed.data();
    s4.n = 8;
    s4.k = 256;
    s4.group_size = 128;
    s4.scale = {sc.data(), DType::kF32, 16};
    s4.g_idx = g_idx.data();
    st = b->PrepareInt4(s4, &pw2);
    EXPECT_TRUE(name == "cpu-ref" || Contains(st, "exactly group_size")) << st.ToString();
    g_idx[5] = 2;
    st = b->PrepareInt4(s4, &pw2);
    EXPECT_TRUE(Contains(st, "g_idx[5] = 2 is outside [0, 2)")) << st.ToString();
    EXPECT_TRUE(!b->Requirements().empty());
  }
}

#ifndef LOWBIT_TEST_GPU_ONLY
TEST(BackendOps, ActivationBytesOfANonShapeIsZero) {
  EXPECT_EQ(ActivationBytes(DType::kBF16, 3, 5), 30u);
  EXPECT_EQ(ActivationBytes(DType::kF32, -2, 5), 0u);  // was (size_t)-2 * 20: a huge size
  EXPECT_EQ(ActivationBytes(DType::kF32, 2, -5), 0u);
  EXPECT_EQ(ActivationBytes(DType::kI8, 0, 7), 0u);
}

TEST(BackendOps, UnknownBackendIsAnError) {
  std::unique_ptr<Backend> b;
  Status st = MakeBackend("tpu", {}, &b);
  EXPECT_TRUE(st.code() == StatusCode::kInvalidArgument && Contains(st, "unknown backend 'tpu'")) << st.ToString();
  st = MakeBackend("auto", {}, &b);
  EXPECT_TRUE(st.ok()) << st.ToString();
}

// A NaN weight code (0x7F / 0xFF, E4M3FN's only NaNs) makes its column's outputs NaN on every
// CPU backend, as in the reference, and leaves the other columns exact: the AVX2 kernels keep
// E4M3 codes and widen them through f16, where a NaN code needs its own mapping.
TEST(BackendOps, Fp8NaNWeightCodesGiveNaNColumns) {
  const int64_t n = 40, k = 70;
  std::vector<uint8_t> w(n * k, 0x38), x(3 * k, 0x38);  // 0x38 = 1.0
  w[3 * k + 5] = 0x7F;
  w[17 * k + 68] = 0xFF;
  w[20 * k + 69] = 0x01;  // the smallest subnormal, 2^-9, in the odd k of the last group
  const float ws = 0.5f, xs[3] = {1.0f, 2.0f, 0.25f};
  for (const std::string& name : BackendsUnderTest()) {
    if (IsGpu(name)) continue;
    OPEN_OR_SKIP(name, b);
    std::unique_ptr<PreparedWeight> pw;
    ASSERT_TRUE(b->PrepareFp8({w.data(), n, k, {&ws, DType::kF32, 1}}, &pw).ok()) << name;
    for (int64_t m : {1, 3}) {
      Buf dx(b.get(), x.data(), m * k), ds(b.get(), xs, m * 4), dy(b.get(), m * n * 4);
      GemmArgs a;
      a.m = m;
      a.x = dx.get();
      a.x_dtype = DType::kF8E4M3;
      a.x_scale = static_cast<const float*>(ds.get());
      a.x_scale_count = m;
      a.w = pw.get();
      a.y = dy.get();
      a.y_dtype = DType::kF32;
      ASSERT_TRUE(b->GemmFp8(a).ok()) << name;
      const std::vector<float> y = dy.Read<float>();
      for (int64_t r = 0; r < m; ++r)
        for (int64_t c = 0; c < n; ++c) {
          const float v = y[r * n + c];
          if (c == 3 || c == 17) {
            EXPECT_TRUE(std::isnan(v)) << name << " M=" << m << " row " << r << " column " << c << ": " << v;
          } else {
            // 70 products of 1.0 (69 and 2^-9 in column 20): exact in f32 whatever the order.
            const double sum = c == 20 ? 69.0 + std::ldexp(1.0, -9) : 70.0;
            EXPECT_EQ(v, static_cast<float>(sum * ws * xs[r])) << name << " M=" << m << " row " << r << " column " << c;
          }
        }
    }
  }
}

// The AVX2 FP8 and W4A16 kernels sum each output's k in the same order whether the row runs alone
// (M = 1, the one-row tiles) or among others (the f32 tiles, on widened or dequantized weights):
// a request's result does not depend on what the runtime batched it with. K spans several
// k-blocks, the last one short.
TEST(BackendOps, Avx2FloatRowsHaveTheSameBitsAtEveryM) {
  if (!CpuHasAvx2Kernels()) GTEST_SKIP() << "no AVX2 / FMA / F16C";
  std::unique_ptr<Backend> b;
  ASSERT_TRUE(MakeBackend("cpu-avx2", {}, &b).ok());
  Rng rng(11);
  const int64_t m = 7, n = 72;
  // FP8, K = 1100: three k-blocks of 512.
  const int64_t k8 = 1100;
  std::vector<uint8_t> w8(n * k8), x8(m * k8);
  for (auto& v : w8) v = rng.Code(true);
  for (auto& v : x8) v = rng.Code(true);
  std::vector<float> ws = RandomScales(n, rng, 0.01f), xs = RandomScales(m, rng, 0.02f);
  std::unique_ptr<PreparedWeight> p8;
  ASSERT_TRUE(b->PrepareFp8({w8.data(), n, k8, {ws.data(), DType::kF32, n}}, &p8).ok());
  // W4A16, K = 1152: group 128, asymmetric, act order; bf16 activations.
  const int64_t k4 = 1152;
  const W4Variant v4{128, true, true};
  Int4Checkpoint ck = MakeInt4(n, k4, v4, DType::kBF16, rng);
  std::unique_ptr<PreparedWeight> p4;
  ASSERT_TRUE(b->PrepareInt4(ck.Source(n, k4, v4.group_size), &p4).ok());
  const std::vector<uint8_t> x4 = MakeActivations(DType::kBF16, m, k4, rng);
  // Runs `rows` rows from r0; returns the output bytes.
  auto run = [&](bool fp8, int64_t r0, int64_t rows) {
    const int64_t k = fp8 ? k8 : k4, out = fp8 ? 4 : 2;
    std::vector<uint8_t> y(rows * n * out);
    GemmArgs a;
    a.m = rows;
    a.x = fp8 ? x8.data() + r0 * k : x4.data() + r0 * k * 2;
    a.x_dtype = fp8 ? DType::kF8E4M3 : DType::kBF16;
    if (fp8) {
      a.x_scale = xs.data() + r0;
      a.x_scale_count = rows;
    }
    a.w = fp8 ? p8.get() : p4.get();
    a.y = y.data();
    a.y_dtype = fp8 ? DType::kF32 : DType::kBF16;
    EXPECT_TRUE((fp8 ? b->GemmFp8(a) : b->GemmW4A16(a)).ok());
    return y;
  };
  for (bool fp8 : {true, false}) {
    const size_t row_bytes = n * (fp8 ? 4 : 2);
    const std::vector<uint8_t> all = run(fp8, 0, m), three = run(fp8, 2, 3);
    for (int64_t r = 0; r < m; ++r) {
      const std::vector<uint8_t> alone = run(fp8, r, 1);
      const char* op = fp8 ? "FP8" : "W4A16";
      EXPECT_EQ(std::memcmp(alone.data(), all.data() + r * row_bytes, row_bytes), 0) << op << " row " << r << " alone vs M = 7";
      if (r >= 2 && r < 5) {
        EXPECT_EQ(std::memcmp(alone.data(), three.data() + (r - 2) * row_bytes, row_bytes), 0)
            << op << " row " << r << " alone vs M = 3";
      }
    }
  }
}

TEST(BackendOps, CpuAvx2IsRefusedWithoutAvx2) {
  std::unique_ptr<Backend> b;
  Status st = MakeBackend("cpu-avx2", {}, &b);
  if (CpuHasAvx2Kernels()) {
    EXPECT_TRUE(st.ok()) << st.ToString();
  } else {
    EXPECT_TRUE(st.code() == StatusCode::kUnavailable && Contains(st, "AVX2")) << st.ToString();
  }
  const std::vector<std::string> names = BackendNames();
  EXPECT_NE(std::find(names.begin(), names.end(), "cpu-avx2"), names.end());
  const std::string isa = CpuIsa();
  EXPECT_TRUE(isa == "avx512-vnni-bf16" || isa == "avx2-fma-f16c" || isa == "generic") << isa;
  if (isa == "generic") {
    EXPECT_FALSE(CpuHasAvx2Kernels());
  }
}
#endif

// ---- negative controls: the tolerances catch realistic bugs ---------------------------------

#ifndef LOWBIT_TEST_GPU_ONLY
TEST(NegativeControl, W4A16ToleranceCatchesWrongGroupScaleAndIgnoredActOrder) {
  Rng rng(5);
  const int64_t m = 4, k = 14336, n = 64;  // the largest K: the loosest tolerance
  const DType dt = DType::kBF16;
  std::vector<uint8_t> x = MakeActivations(dt, m, k, rng);
  Int4Checkpoint ck = MakeInt4(n, k, {128, true, true}, dt, rng);
  Int4WeightSource src = ck.Source(n, k, 128);
  std::vector<uint8_t> want(m * n * 2), got(m * n * 2);
  std::vector<float> abs_sum(m * n);
  ref::GemmW4A16(m, dt, x.data(), src, nullptr, want.data(), abs_sum.data());
  // (a) one group's scale doubled for every row.
  Int4Checkpoint bad = ck;
  for (int64_t r = 0; r < n; ++r)
    ref::StoreFloat(dt, bad.scale.data(), r * (k / 128) + 17, 2 * bad.scale_f[r * (k / 128) + 17]);
  ref::GemmW4A16(m, dt, x.data(), bad.Source(n, k, 128), nullptr, got.data());
  std::string d = CompareFloat(dt, got.data(), want.data(), abs_sum.data(), m, n, k, 0.0);
  EXPECT_FALSE(d.empty());
  // (b) act order ignored (g_idx dropped).
  Int4WeightSource no_order = src;
  no_order.g_idx = nullptr;
  ref::GemmW4A16(m, dt, x.data(), no_order, nullptr, got.data());
  d = CompareFloat(dt, got.data(), want.data(), abs_sum.data(), m, n, k, 0.0);
  EXPECT_FALSE(d.empty());
  // (c) zero points ignored.
  Int4WeightSource no_zp = src;
  no_zp.zero_point_packed = nullptr;
  ref::GemmW4A16(m, dt, x.data(), no_zp, nullptr, got.data());
  d = CompareFloat(dt, got.data(), want.data(), abs_sum.data(), m, n, k, 0.0);
  EXPECT_FALSE(d.empty());
  // The unperturbed weight through a different summation order passes.
  std::unique_ptr<Backend> b;
  ASSERT_TRUE(MakeBackend("cpu", {}, &b).ok());
  std::unique_ptr<PreparedWeight> pw;
  ASSERT_TRUE(b->PrepareInt4(src, &pw).ok());
  GemmArgs a;
  a.m = m;
  a.x = x.data();
  a.x_dtype = dt;
  a.w = pw.get();
  a.y = got.data();
  a.y_dtype = dt;
  ASSERT_TRUE(b->GemmW4A16(a).ok());
  d = CompareFloat(dt, got.data(), want.data(), abs_sum.data(), m, n, k, 0.0);
  EXPECT_TRUE(d.empty()) << d;
}

TEST(NegativeControl, Fp8ToleranceCatchesSwappedChannelScales) {
  Rng rng(6);
  const int64_t m = 4, k = 14336, n = 32;
  std::vector<uint8_t> w(n * k), x(m * k);
  for (auto& v : w) v = static_cast<uint8_t>(rng.Next() & 0x7E);
  for (auto& v : x) v = static_cast<uint8_t>(rng.Next() & 0x7E);
  std::vector<float> ws = RandomScales(n, rng, 0.01f), xs = RandomScales(m, rng, 0.01f);
  ws[3] = 0.01f;
  ws[4] = 0.012f;
  std::vector<float> ws_bad = ws;
  std::swap(ws_bad[3], ws_bad[4]);
  std::vector<float> want(m * n), got(m * n), abs_sum(m * n);
  ref::GemmFp8(m, x.data(), xs.data(), m, {w.data(), n, k, {ws.data(), DType::kF32, n}}, nullptr, DType::kF32,
               want.data(), abs_sum.data());
  ref::GemmFp8(m, x.data(), xs.data(), m, {w.data(), n, k, {ws_bad.data(), DType::kF32, n}}, nullptr, DType::kF32,
               got.data());
  EXPECT_FALSE(
      CompareFloat(DType::kF32, got.data(), want.data(), abs_sum.data(), m, n, k, std::ldexp(1.0, -12)).empty());
}

TEST(NegativeControl, W8A8BitExactnessCatchesOneCodeOffByOne) {
  const int64_t m = 2, k = 4096, n = 16;
  Rng rng(7);
  std::vector<int8_t> w(n * k), x(m * k);
  for (auto& v : w) v = static_cast<int8_t>(rng.Int(-128, 127));
  for (auto& v : x) v = static_cast<int8_t>(rng.Int(-127, 127));
  x[5] = 1;
  float ws = 0.01f, xs[2] = {0.02f, 0.03f};
  std::vector<float> want(m * n), got(m * n);
  ref::GemmW8A8(m, x.data(), xs, 2, {w.data(), n, k, {&ws, DType::kF32, 1}}, nullptr, DType::kF32, want.data());
  w[5] = static_cast<int8_t>(w[5] == 127 ? 126 : w[5] + 1);
  ref::GemmW8A8(m, x.data(), xs, 2, {w.data(), n, k, {&ws, DType::kF32, 1}}, nullptr, DType::kF32, got.data());
  EXPECT_FALSE(CompareBytes(got.data(), want.data(), want.size() * 4, 4, "outputs").empty());
}
#endif

}  // namespace
}  // namespace lowbit::kernels

#ifdef LOWBIT_MINITEST
int main(int argc, char** argv) { return minitest::RunAll(argc, argv); }
#endif
