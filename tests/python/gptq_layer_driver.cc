// Test driver for the NumPy GPTQ reference (gptq_ref.py): accumulates the Hessian of raw
// float32 inputs with HessianAccumulator, runs QuantizeLinearGptq on a raw float32 weight and
// writes what it produced as raw little-endian files.
//   gptq_layer_driver --x=X.bin --tokens=T --sequences=S --w=W.bin --rows=N --cols=K
//                     --type=int|float --bits=4 --symmetric=1 --group_size=32 (0 tensor, -1 channel)
//                     --actorder=none|weight|group [--block_size=128] [--dampening=0.01] --out=DIR
// Writes DIR/H.bin (float32 [K,K]), codes.bin (int8 / E4M3 bytes [N,K]), scale.bin (float32
// cells), zero_point.bin (int32 cells), g_idx.bin (int32 [K], actorder group only),
// dequantized.bin (float32 [N,K]) and meta.json.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "calibrator/gptq.h"
#include "calibrator/hessian.h"
#include "common/blas_env.h"

namespace {

template <typename T>
bool ReadRaw(const std::string& path, size_t count, std::vector<T>& out) {
  out.resize(count);
  std::ifstream f(path, std::ios::binary);
  if (!f.read(reinterpret_cast<char*>(out.data()), static_cast<std::streamsize>(count * sizeof(T)))) return false;
  return f.peek() == EOF;
}

template <typename T>
bool WriteRaw(const std::string& path, const std::vector<T>& v) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(v.data()), static_cast<std::streamsize>(v.size() * sizeof(T)));
  return static_cast<bool>(f);
}

int Fail(const std::string& why) {
  std::fprintf(stderr, "gptq_layer_driver: %s\n", why.c_str());
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  lowbit::EnsureBlasCoreType(argv);
  std::map<std::string, std::string> flags;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    size_t eq = a.find('=');
    if (a.rfind("--", 0) != 0 || eq == std::string::npos) return Fail("bad argument " + a);
    flags[a.substr(2, eq - 2)] = a.substr(eq + 1);
  }
  auto get = [&](const std::string& k, const std::string& def = "") {
    auto it = flags.find(k);
    return it == flags.end() ? def : it->second;
  };
  const int64_t tokens = std::atoll(get("tokens").c_str()), sequences = std::atoll(get("sequences", "1").c_str());
  const int64_t n = std::atoll(get("rows").c_str()), k = std::atoll(get("cols").c_str());
  const std::string out = get("out");
  if (tokens <= 0 || n <= 0 || k <= 0 || out.empty()) return Fail("need --tokens, --rows, --cols, --out");

  std::vector<float> x, w;
  if (!ReadRaw(get("x"), tokens * k, x)) return Fail("cannot read " + get("x") + " as [tokens, cols] float32");
  if (!ReadRaw(get("w"), n * k, w)) return Fail("cannot read " + get("w") + " as [rows, cols] float32");

  lowbit::HessianAccumulator acc(k);
  // Two batches, to exercise accumulation: the first half of the sequences, then the rest.
  const int64_t s1 = sequences / 2, t1 = tokens * s1 / sequences;
  acc.Add(lowbit::CpuCompute(), x.data(), t1, s1);
  acc.Add(lowbit::CpuCompute(), x.data() + t1 * k, tokens - t1, sequences - s1);
  std::vector<float> h = acc.Finish();

  lowbit::QuantArgs args;
  args.type = get("type", "int") == "float" ? lowbit::QuantType::kFloat : lowbit::QuantType::kInt;
  args.num_bits = std::atoi(get("bits", "4").c_str());
  args.symmetric = get("symmetric", "1") == "1";
  const int group_size = std::atoi(get("group_size", "0").c_str());
  if (group_size > 0) {
    args.group_size = group_size;
    args.strategy = lowbit::Strategy::kGroup;
  } else if (group_size == -1) {
    args.group_size = -1;
    args.strategy = lowbit::Strategy::kChannel;
  } else {
    args.strategy = lowbit::Strategy::kTensor;
  }
  const std::string order = get("actorder", "none");
  args.actorder = order == "weight" ? lowbit::ActOrder::kWeight
                  : order == "group" ? lowbit::ActOrder::kGroup
                                     : lowbit::ActOrder::kNone;
  lowbit::GptqOptions options;
  options.block_size = std::atoll(get("block_size", "128").c_str());
  options.dampening_frac = std::atof(get("dampening", "0.01").c_str());

  auto r = lowbit::QuantizeLinearGptq("layer", w, n, k, h, args, lowbit::DType::kF32, options, lowbit::CpuCompute());
  if (!r.ok()) return Fail(std::string(r.status().message()));
  const lowbit::QuantizedLinear& q = r->quantized;
  std::vector<uint8_t> codes(n * k);
  for (int64_t i = 0; i < n * k; ++i) {
    codes[i] = args.type == lowbit::QuantType::kFloat ? q.fp8_codes[i] : static_cast<uint8_t>(q.int_codes[i]);
  }
  bool ok = WriteRaw(out + "/H.bin", h) && WriteRaw(out + "/codes.bin", codes) &&
            WriteRaw(out + "/scale.bin", q.qparams.scale) && WriteRaw(out + "/zero_point.bin", q.qparams.zero_point) &&
            WriteRaw(out + "/dequantized.bin", r->dequantized);
  if (!q.g_idx.empty()) ok = ok && WriteRaw(out + "/g_idx.bin", q.g_idx);
  std::ofstream meta(out + "/meta.json");
  char loss[64];
  std::snprintf(loss, sizeof loss, "%.17g", r->loss);
  meta << "{\"loss\": " << loss << ", \"fell_back_to_rtn\": " << (r->fell_back_to_rtn ? "true" : "false")
       << ", \"cell_rows\": " << q.qparams.cell_rows << ", \"groups\": " << q.qparams.groups
       << ", \"seconds\": " << r->seconds << "}\n";
  if (!ok || !meta) return Fail("cannot write into " + out);
  return 0;
}
