// libFuzzer target for what a client streams into the runtime (LoadModelStream: a config.json and
// a set of tensors) and the GEMMs it then asks for, differential across the CPU backends.
//
// The input drives a structure: a quantization scheme (the presets, varied: group size, act
// order, static or dynamic activations, per-tensor weight scales), one Linear's N and K, its
// tensors (each of the right dtype and shape, or dropped, retyped, reshaped, or one too many),
// their contents (seeded noise with planted NaN / Inf / 0 / huge / subnormal values, valid or
// arbitrary g_idx and zero points), and a few GEMMs (M, activation and output dtypes, a wrong K).
// The same load and GEMMs run on three engines: "cpu" (AVX-512 or AVX2 kernels, whichever this
// CPU has), "cpu-generic" and "cpu-ref" (the exact reference). Every engine must give the same
// status code for each step, and a loaded layer's outputs must agree with the reference:
//   * W8A8 (dynamic and static): the same bytes (the numerics contract: bit-exact);
//   * FP8 and W4A16: NaN in the same places and |y - y_ref| ≤ 2·ulp_out(y_ref) + 4u·|y_ref| +
//     (K + 4)·u·S, u = 2^-24, S = Σ_k |x_k|·|w_k| (bounded from the tensors this file wrote):
//     the worst case of an f32 sum of K terms (a fuzzer can find the worst case, so not the
//     random-walk bound the backend-ops test uses). Compared where scales, bias and activations
//     lie within 2^±64 (InRange) and S well inside the output's range.
//   * on an AVX2 CPU, FP8 and W4A16 rows on "cpu" run alone give the bytes they had in the batch
//     (its kernels sum k in the same order at every M).
// Any other outcome aborts with the step, the scheme and the first differing element.
// LOWBIT_FUZZ_STATS=1: inputs, loads and compared GEMMs per preset at exit. LOWBIT_FUZZ_DEBUG=1:
// each input's config.json, load status and tensors (to read a finding).
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "common/quant_args.h"
#include "common/tensor.h"
#include "kernels/cpu/cpu_backend.h"
#include "nlohmann/json.hpp"
#include "runtime/engine.h"
#include "spdlog/spdlog.h"

namespace {

using lowbit::DType;
using lowbit::Tensor;
using lowbit::runtime::Engine;

constexpr char kModule[] = "model.layers.0.mlp.down_proj";

// Reads the fuzzer's bytes front to back; zeros once they run out.
class Bytes {
 public:
  Bytes(const uint8_t* data, size_t size) : p_(data), end_(data + size) {}
  uint8_t U8() { return p_ < end_ ? *p_++ : 0; }
  uint32_t U32() {
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v = (v << 8) | U8();
    return v;
  }
  bool Bit() { return U8() & 1; }

 private:
  const uint8_t* p_;
  const uint8_t* end_;
};

std::vector<std::unique_ptr<Engine>>& Engines() {
  static auto* engines = [] {
    spdlog::set_level(spdlog::level::warn);  // not a line per load and unload
    auto* v = new std::vector<std::unique_ptr<Engine>>;
    for (const char* backend : {"cpu-ref", "cpu", "cpu-generic"}) {
      lowbit::runtime::EngineOptions o;
      o.backend = backend;
      o.threads = 2;
      o.batching.enabled = false;
      auto e = Engine::Create(o);
      if (!e.ok()) {
        std::fprintf(stderr, "engine %s: %s\n", backend, e.status().ToString().c_str());
        std::abort();
      }
      v->push_back(*std::move(e));
    }
    return v;
  }();
  return *engines;
}

[[noreturn]] void Fail(const std::string& what) {
  std::fprintf(stderr, "fuzz_load: %s\n", what.c_str());
  std::abort();
}

// The scheme as a quantization_config, and what the tensors must be for it.
struct Plan {
  std::string preset;
  lowbit::QuantScheme scheme;
  bool int4 = false, fp8 = false, static_act = false, per_tensor_w = false, asym = false, act_order = false;
  int64_t group_size = 0;  // int4: 0 = per channel
};

Plan MakePlan(Bytes& in) {
  static const char* kPresets[] = {"W8A8", "FP8", "FP8_DYNAMIC", "W4A16", "W4A16_ASYM"};
  Plan p;
  p.preset = kPresets[in.U8() % 5];
  p.scheme = *lowbit::PresetScheme(p.preset, {"Linear"});
  const uint8_t flags = in.U8();
  lowbit::QuantArgs& w = *p.scheme.weights;
  p.int4 = w.num_bits == 4;
  p.fp8 = w.type == lowbit::QuantType::kFloat;
  p.asym = !w.symmetric;
  if (p.int4) {
    static const int kGroups[] = {128, 32, 64, 16, -1};
    const int gs = kGroups[(flags >> 1) % 5];
    if (gs < 0) {
      w.strategy = lowbit::Strategy::kChannel;
      w.group_size.reset();
    } else {
      w.group_size = gs;
      p.group_size = gs;
    }
    if (flags & 1) {
      w.actorder = (flags & 0x40) ? lowbit::ActOrder::kWeight : lowbit::ActOrder::kGroup;
      w.actorder_spelling = (flags & 0x40) ? "weight" : "group";
      p.act_order = true;
    }
  } else {
    lowbit::QuantArgs& a = *p.scheme.input_activations;
    if (flags & 1) {  // flip static <-> dynamic
      if (a.dynamic == lowbit::Dynamic::kDynamic) {
        a.dynamic = lowbit::Dynamic::kStatic;
        a.strategy = lowbit::Strategy::kTensor;
      } else {
        a.dynamic = lowbit::Dynamic::kDynamic;
        a.strategy = lowbit::Strategy::kToken;
      }
      a.observer.reset();
    }
    p.static_act = a.dynamic == lowbit::Dynamic::kStatic;
    if (flags & 2) {
      w.strategy = lowbit::Strategy::kTensor;
      p.per_tensor_w = true;
    }
  }
  return p;
}

std::string ConfigJson(const Plan& p) {
  // No model_type: a llama one must have all seven Linears of each layer; this has one.
  nlohmann::json config = {{"num_hidden_layers", 1}};
  config["quantization_config"] =
      lowbit::QuantizationConfigToJson(lowbit::MakeQuantizationConfig({{"group_0", p.scheme}}, {"lm_head"}, {}));
  return config.dump();
}

// A float value from noise, with the fuzzer's planted specials.
float Special(uint8_t kind, float noise) {
  switch (kind % 8) {
    case 0:
      return std::numeric_limits<float>::quiet_NaN();
    case 1:
      return kind & 8 ? std::numeric_limits<float>::infinity() : -std::numeric_limits<float>::infinity();
    case 2:
      return 0.0f;
    case 3:
      return noise * 1e30f;
    case 4:
      return noise * 1e-40f;  // f32 subnormal (0 in f16 / bf16 is fine too)
    case 5:
      return 65504.0f;
    case 6:
      return -448.0f * noise;
    default:
      return noise * 1e-6f;
  }
}

// A float tensor of `shape` in `dtype`: N(0, 1)·10^e noise with up to three planted specials.
Tensor FloatTensor(Bytes& in, std::mt19937& rng, DType dtype, const lowbit::Shape& shape, bool positive) {
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  const int e = static_cast<int>(in.U8() % 9) - 4;
  std::normal_distribution<float> normal(0.0f, std::pow(10.0f, static_cast<float>(e)));
  std::vector<float> v(numel);
  for (float& f : v) f = positive ? std::fabs(normal(rng)) + 1e-3f : normal(rng);
  const int pokes = in.U8() % 4;
  for (int i = 0; i < pokes && numel > 0; ++i) {
    const uint32_t where = in.U32();
    const uint8_t kind = in.U8();
    v[where % numel] = Special(kind, normal(rng));
  }
  return Tensor::FromFloats(v, shape, dtype);
}

Tensor IntTensor(std::mt19937& rng, DType dtype, const lowbit::Shape& shape) {
  Tensor t = Tensor::Zeros(dtype, shape);
  for (uint8_t& b : t.mutable_bytes()) b = static_cast<uint8_t>(rng());
  return t;
}

struct Layer {
  int64_t n = 0, k = 0, groups = 1, gs = 0;
  std::map<std::string, Tensor> tensors;
};

// The tensor a name gets: as the plan wants it, or (the fuzzer's choice) dropped, retyped or
// reshaped.
void Put(Bytes& in, std::mt19937& rng, Layer& l, const std::string& suffix, Tensor t) {
  const uint8_t m = in.U8();
  const std::string name = std::string(kModule) + suffix;
  if (m < 224) {
    l.tensors[name] = std::move(t);
    return;
  }
  switch (m % 4) {
    case 0:
      return;  // dropped
    case 1: {  // another dtype, same shape
      static const DType kTypes[] = {DType::kF32, DType::kF16, DType::kBF16, DType::kI8,
                                     DType::kU8,  DType::kI32, DType::kI64,  DType::kF8E4M3};
      l.tensors[name] = IntTensor(rng, kTypes[in.U8() % 8], t.shape());
      return;
    }
    case 2: {  // one more element in a dimension
      lowbit::Shape s = t.shape();
      if (s.empty()) s.push_back(1);
      s[in.U8() % s.size()] += 1;
      l.tensors[name] = IntTensor(rng, t.dtype(), s);
      return;
    }
    default: {  // an extra leading dimension of 1, or rank 0
      lowbit::Shape s = t.shape();
      if (in.Bit()) {
        s.insert(s.begin(), 1);
      } else {
        s.clear();
      }
      l.tensors[name] = IntTensor(rng, t.dtype(), s);
    }
  }
}

Layer MakeLayer(Bytes& in, const Plan& p) {
  Layer l;
  l.n = 1 + in.U8() % 48;
  l.k = 1 + (static_cast<int64_t>(in.U8()) << 1 | in.Bit()) % 320;
  std::mt19937 rng(in.U32());
  static const DType kScaleTypes[] = {DType::kF32, DType::kF16, DType::kBF16};
  const DType scale_dt = kScaleTypes[in.U8() % 3];
  if (p.int4) {
    l.gs = p.group_size > 0 ? p.group_size : l.k;
    l.groups = (l.k + l.gs - 1) / l.gs;
    const int64_t words = (l.k + 7) / 8;
    Put(in, rng, l, ".weight_packed", IntTensor(rng, DType::kI32, {l.n, words}));
    Tensor shape = Tensor::Zeros(DType::kI64, {2});
    shape.mutable_data<int64_t>()[0] = l.n;
    shape.mutable_data<int64_t>()[1] = l.k;
    Put(in, rng, l, ".weight_shape", std::move(shape));
    Put(in, rng, l, ".weight_scale", FloatTensor(in, rng, scale_dt, {l.n, l.groups}, true));
    if (p.asym) Put(in, rng, l, ".weight_zero_point", IntTensor(rng, DType::kI32, {(l.n + 7) / 8, l.groups}));
    if (p.act_order) {
      // A valid act-order g_idx (every group gs columns, shuffled), or with the fuzzer's say one
      // entry changed.
      Tensor g = Tensor::Zeros(DType::kI32, {l.k});
      int32_t* gi = g.mutable_data<int32_t>();
      for (int64_t i = 0; i < l.k; ++i) gi[i] = static_cast<int32_t>(i / l.gs);
      std::shuffle(gi, gi + l.k, rng);
      if (in.U8() >= 240) gi[in.U32() % l.k] = static_cast<int32_t>(in.U32());
      Put(in, rng, l, ".weight_g_idx", std::move(g));
    }
  } else {
    Put(in, rng, l, ".weight", IntTensor(rng, p.fp8 ? DType::kF8E4M3 : DType::kI8, {l.n, l.k}));
    Put(in, rng, l, ".weight_scale",
        FloatTensor(in, rng, scale_dt, p.per_tensor_w ? lowbit::Shape{1} : lowbit::Shape{l.n, 1}, true));
    if (p.static_act) Put(in, rng, l, ".input_scale", FloatTensor(in, rng, DType::kF32, {1}, true));
  }
  if (in.Bit()) Put(in, rng, l, ".bias", FloatTensor(in, rng, kScaleTypes[in.U8() % 3], {l.n}, false));
  return l;
}

// The layer as the runtime reads it: a weight one row longer, or weight_packed without
// weight_shape (K = 8 · its words), is a valid layer of other dims.
Layer AsLoaded(const Plan& p, const Layer& planned) {
  Layer l;
  l.tensors = planned.tensors;
  const std::string w = std::string(kModule) + (p.int4 ? ".weight_packed" : ".weight");
  const Tensor& t = l.tensors.at(w);
  l.n = t.dim(t.shape().size() - 2);
  l.k = t.dim(t.shape().size() - 1);
  if (p.int4) {
    l.k *= 8;
    auto shape = l.tensors.find(std::string(kModule) + ".weight_shape");
    if (shape != l.tensors.end()) {
      l.k = shape->second.dtype() == DType::kI64 ? shape->second.data<int64_t>()[1] : shape->second.data<int32_t>()[1];
    }
    l.gs = p.group_size > 0 ? p.group_size : l.k;
    l.groups = (l.k + l.gs - 1) / l.gs;
  }
  return l;
}

// Σ_k |x_k|·|w_k| per output (the tolerance's S), from the tensors as written; nullopt when the
// tensors are not the plan's (then the load must have failed anyway).
std::optional<std::vector<double>> AbsSums(const Plan& p, const Layer& l, const std::vector<float>& x, int64_t m) {
  auto find = [&](const char* suffix) -> const Tensor* {
    auto it = l.tensors.find(std::string(kModule) + suffix);
    return it == l.tensors.end() ? nullptr : &it->second;
  };
  const Tensor* scale = find(".weight_scale");
  if (!scale) return std::nullopt;
  const std::vector<float> s = scale->ToFloats();
  std::vector<double> w(l.n * l.k);
  if (p.int4) {
    const Tensor* packed = find(".weight_packed");
    const Tensor* zp = find(".weight_zero_point");
    const Tensor* gidx = find(".weight_g_idx");
    if (!packed || packed->dtype() != DType::kI32 || (p.asym && !zp) ||
        s.size() != static_cast<size_t>(l.n * l.groups)) {
      return std::nullopt;
    }
    const int64_t words = (l.k + 7) / 8;
    for (int64_t r = 0; r < l.n; ++r) {
      for (int64_t c = 0; c < l.k; ++c) {
        const int64_t g = gidx ? gidx->data<int32_t>()[c] : c / l.gs;
        const uint32_t word = static_cast<uint32_t>(packed->data<int32_t>()[r * words + c / 8]);
        const int q = static_cast<int>((word >> (4 * (c % 8))) & 15) - 8;
        int z = 0;
        if (p.asym) {
          const uint32_t zw = static_cast<uint32_t>(zp->data<int32_t>()[(r / 8) * l.groups + g]);
          z = static_cast<int>((zw >> (4 * (r % 8))) & 15) - 8;
        }
        w[r * l.k + c] = std::fabs((q - z) * static_cast<double>(s[r * l.groups + g])) * 1.01;
      }
    }
  } else {
    const Tensor* weight = find(".weight");
    if (!weight || weight->numel() != l.n * l.k) return std::nullopt;
    for (int64_t r = 0; r < l.n; ++r) {
      const double ws = s[s.size() == 1 ? 0 : r];
      for (int64_t c = 0; c < l.k; ++c) {
        const double v =
            p.fp8 ? lowbit::Fp8E4M3ToFloat(weight->data<uint8_t>()[r * l.k + c]) : weight->data<int8_t>()[r * l.k + c];
        w[r * l.k + c] = std::fabs(v * ws);
      }
    }
  }
  // The activations the kernel multiplies: x itself (W4A16) or its 8-bit quantization, within a
  // relative 2^-4 and an absolute (scale · 2^-9) of x.
  double abs_floor = 0.0;
  if (p.fp8 && p.static_act) {
    const Tensor* is = find(".input_scale");
    if (!is) return std::nullopt;
    abs_floor = std::fabs(static_cast<double>(is->ToFloats()[0])) / 512.0;
  }
  std::vector<double> out(m * l.n, 0.0);
  for (int64_t i = 0; i < m; ++i) {
    double row_abs_max = 0.0;
    for (int64_t c = 0; c < l.k; ++c) row_abs_max = std::max(row_abs_max, std::fabs(double{x[i * l.k + c]}));
    const double floor = p.fp8 && !p.static_act ? row_abs_max / 448.0 / 512.0 : abs_floor;
    for (int64_t r = 0; r < l.n; ++r) {
      double acc = 0.0;
      for (int64_t c = 0; c < l.k; ++c) acc += (std::fabs(double{x[i * l.k + c]}) * 1.07 + floor) * w[r * l.k + c];
      out[i * l.n + r] = acc;
    }
  }
  return out;
}

// The float schemes' outputs are compared where scales, bias and activations lie within
// [2^-64, 2^64] in magnitude (or are 0): beyond, an f32 kernel's intermediate product
// (acc · weight scale, then · activation scale) may overflow or underflow where the reference's
// f64 does not. Such values are still loaded and run (statuses compared, sanitizers on).
bool InRange(std::span<const float> v) {
  for (float f : v) {
    const float a = std::fabs(f);
    if (!(a == 0.0f || (a >= 0x1p-64f && a <= 0x1p64f))) return false;
  }
  return true;
}
bool InRange(const Layer& l, const char* suffix) {
  auto it = l.tensors.find(std::string(kModule) + suffix);
  return it == l.tensors.end() || InRange(it->second.ToFloats());
}

double UlpOut(DType dt, double v) {
  const double a = std::fabs(v);
  if (dt == DType::kF16) return std::max(a * 0x1p-10, 0x1p-24);
  if (dt == DType::kBF16) return std::max(a * 0x1p-7, 0x1p-133);
  return std::max(a * 0x1p-23, 0x1p-149);
}

double MaxOut(DType dt) { return dt == DType::kF16 ? 65504.0 : dt == DType::kBF16 ? 3.38e38 : 3.40e38; }

std::string Where(const Plan& p, const Layer& l, const char* step) {
  return std::string(step) + " (" + p.preset + ", N " + std::to_string(l.n) + ", K " + std::to_string(l.k) + ")";
}

// `sums`: AbsSums of this call (float schemes only), computed once for every backend compared;
// `in_range`: the layer's scales and bias lie within InRange.
void CompareOutputs(const Plan& p, const Layer& l, int64_t m, DType x_dtype, const std::vector<float>& x,
                    const std::vector<double>* sums, bool in_range, const Tensor& ref, const Tensor& got,
                    const std::string& backend) {
  if (got.dtype() != ref.dtype() || got.shape() != ref.shape()) Fail(Where(p, l, "output shape") + " " + backend);
  if (!p.int4 && !p.fp8) {  // W8A8: bit-exact
    if (std::memcmp(got.bytes().data(), ref.bytes().data(), ref.nbytes()) != 0) {
      const std::vector<float> a = ref.ToFloats(), b = got.ToFloats();
      for (size_t i = 0; i < a.size(); ++i) {
        if (std::memcmp(&a[i], &b[i], sizeof(float)) != 0) {
          Fail(Where(p, l, "W8A8 output") + " " + backend + ": element " + std::to_string(i) + " " +
               std::to_string(b[i]) + " vs reference " + std::to_string(a[i]));
        }
      }
    }
    return;
  }
  if (!in_range) return;
  const std::vector<float> a = ref.ToFloats(), b = got.ToFloats();
  // W4A16 with F32 activations runs in the model's 16-bit dtype (F16 or BF16) and converts the
  // output: its rounding is that dtype's (BF16's, the coarser, taken here).
  const DType rounded = p.int4 && x_dtype == DType::kF32 ? DType::kBF16 : ref.dtype();
  const double u = 0x1p-24, max_out = MaxOut(rounded);
  for (int64_t i = 0; i < m; ++i) {
    bool row_safe = InRange(std::span<const float>(x).subspan(i * l.k, l.k));
    for (int64_t r = 0; r < l.n; ++r)
      row_safe = row_safe && std::isfinite((*sums)[i * l.n + r]) && (*sums)[i * l.n + r] < 1e36;
    for (int64_t r = 0; r < l.n && row_safe; ++r) {
      const size_t e = i * l.n + r;
      const double y = a[e], v = b[e], s = (*sums)[e];
      if (s > 0.25 * max_out) continue;  // the output may round to ±inf in one and not the other
      if (std::isnan(y) != std::isnan(v)) {
        Fail(Where(p, l, "NaN placement") + " " + backend + ": element " + std::to_string(e) + " " + std::to_string(v) +
             " vs reference " + std::to_string(y));
      }
      if (std::isnan(y)) continue;
      if (std::isinf(y) && y == v) continue;  // e.g. a dequantized weight beyond F16's range
      const double tol = 2 * UlpOut(rounded, y) + 4 * u * std::fabs(y) + (l.k + 4) * u * s;
      if (!(std::fabs(y - v) <= tol)) {
        Fail(Where(p, l, "output") + " " + backend + ": element " + std::to_string(e) + " " + std::to_string(v) +
             " vs reference " + std::to_string(y) + " (tolerance " + std::to_string(tol) + ", S " + std::to_string(s) +
             ")");
      }
    }
  }
}

// The AVX2 kernels sum every output's k in the same order at every M (docs/runtime.md), so each
// row of a float-accumulating GEMM run alone must give the same bytes as in the batch.
void RowsAloneMatch(Engine& engine, const lowbit::runtime::GemmRequest& req, const Tensor& batched,
                    const std::string& where) {
  const int64_t m = req.x.dim(0), k = req.x.dim(1), n = batched.dim(1);
  const size_t x_row = k * DTypeSize(req.x.dtype()), y_row = n * DTypeSize(batched.dtype());
  for (int64_t i = 0; i < m; ++i) {
    lowbit::runtime::GemmRequest one = req;
    one.x = Tensor::FromBytes(req.x.dtype(), {1, k}, req.x.bytes().subspan(i * x_row, x_row));
    absl::StatusOr<lowbit::runtime::GemmResult> r = engine.Gemm(one);
    if (!r.ok()) Fail(where + ": row " + std::to_string(i) + " alone: " + r.status().ToString());
    if (std::memcmp(r->y.bytes().data(), batched.bytes().data() + i * y_row, y_row) != 0) {
      Fail(where + ": row " + std::to_string(i) + " of M " + std::to_string(m) + " differs alone");
    }
  }
}

// With LOWBIT_FUZZ_STATS set, how far the inputs got, per preset, printed at exit: a check that
// the fuzzer reaches loaded layers and compared GEMMs, not only refused loads.
struct Stats {
  const bool on = std::getenv("LOWBIT_FUZZ_STATS") != nullptr;
  std::map<std::string, std::array<int64_t, 3>> by_preset;  // inputs, loaded, GEMMs compared
  ~Stats() {
    if (!on) return;
    for (const auto& [preset, c] : by_preset)
      std::fprintf(stderr, "%-12s inputs %lld loaded %lld gemms %lld\n", preset.c_str(), static_cast<long long>(c[0]),
                   static_cast<long long>(c[1]), static_cast<long long>(c[2]));
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto& engines = Engines();
  Bytes in(data, size);
  const Plan plan = MakePlan(in);
  const Layer layer = MakeLayer(in, plan);
  const std::string config = ConfigJson(plan);
  static Stats stats;
  std::array<int64_t, 3>& count = stats.by_preset[plan.preset];
  ++count[0];

  std::vector<absl::Status> loaded;
  for (auto& e : engines) {
    std::map<std::string, Tensor> copy;
    for (const auto& [name, t] : layer.tensors) copy[name] = t.Copy();
    loaded.push_back(e->LoadFromTensors("m", config, std::move(copy)).status());
  }
  if (std::getenv("LOWBIT_FUZZ_DEBUG")) {
    std::fprintf(stderr, "%s\n%s\n", config.c_str(), loaded[0].ToString().c_str());
    for (const auto& [name, t] : layer.tensors)
      std::fprintf(stderr, "  %s %s %s\n", name.c_str(), std::string(lowbit::DTypeName(t.dtype())).c_str(),
                   lowbit::ShapeString(t.shape()).c_str());
  }
  for (size_t i = 1; i < engines.size(); ++i) {
    if (loaded[i].code() != loaded[0].code()) {
      Fail(Where(plan, layer, "load") + ": " + engines[i]->Info().backend + " " + loaded[i].ToString() +
           " vs reference " + loaded[0].ToString());
    }
  }
  if (loaded[0].ok()) {
    ++count[1];
    const Layer as_loaded = AsLoaded(plan, layer);
    const bool float_scheme = plan.fp8 || plan.int4;
    const bool in_range =
        InRange(as_loaded, ".weight_scale") && InRange(as_loaded, ".input_scale") && InRange(as_loaded, ".bias");
    static const bool avx2 = lowbit::kernels::CpuIsa() == "avx2-fma-f16c";
    std::mt19937 rng(in.U32());
    const int calls = 1 + in.U8() % 3;
    for (int c = 0; c < calls; ++c) {
      static const int64_t kRows[] = {1, 2, 3, 4, 5, 7, 8, 17};
      const int64_t m = kRows[in.U8() % 8];
      static const DType kTypes[] = {DType::kBF16, DType::kF16, DType::kF32};
      const DType xdt = kTypes[in.U8() % 3];
      const int64_t k = in.U8() >= 248 ? layer.k + 1 : layer.k;
      lowbit::runtime::GemmRequest req;
      req.model = "m";
      req.layer = kModule;
      req.x = FloatTensor(in, rng, xdt, {m, k}, false);
      if (in.Bit()) req.out_dtype = kTypes[in.U8() % 3];
      std::vector<absl::StatusOr<lowbit::runtime::GemmResult>> results;
      for (auto& e : engines) results.push_back(e->Gemm(req));
      const std::vector<float> x = req.x.ToFloats();  // as the engines read it
      std::optional<std::vector<double>> sums;
      if (results[0].ok() && float_scheme) {
        sums = AbsSums(plan, as_loaded, x, m);
        if (!sums) Fail(Where(plan, as_loaded, "loaded a layer whose tensors are not the plan's"));
      }
      for (size_t i = 1; i < engines.size(); ++i) {
        const std::string backend = engines[i]->Info().backend;
        if (results[i].status().code() != results[0].status().code()) {
          Fail(Where(plan, layer, "gemm") + ": " + backend + " " + results[i].status().ToString() + " vs reference " +
               results[0].status().ToString());
        }
        if (results[0].ok()) {
          const std::string call = backend + ", M " + std::to_string(m) + ", x " + std::string(lowbit::DTypeName(xdt)) +
                                   ", y " + std::string(lowbit::DTypeName(results[0]->y.dtype()));
          CompareOutputs(plan, as_loaded, m, xdt, x, sums ? &*sums : nullptr, in_range, results[0]->y, results[i]->y,
                         call);
          ++count[2];
        }
      }
      if (results[1].ok() && m > 1 && float_scheme && avx2) {
        RowsAloneMatch(*engines[1], req, results[1]->y, Where(plan, layer, "row alone"));
      }
    }
  }
  for (auto& e : engines) e->Unload("m").IgnoreError();
  return 0;
}
