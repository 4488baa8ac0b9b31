// lowbit-bench-kernels: times the kernel ops on one backend for Llama-3-8B layer shapes and a set
// of M, with baselines measured in the same run (design.md §7):
//   * CPU: OpenBLAS sgemm (f32, Y = X·Wᵀ) with OPENBLAS_CORETYPE set to SkylakeX when the CPU
//     has AVX-512 and the variable is unset (re-exec before OpenBLAS loads; design.md "CPU BLAS:
//     a trap"). On an AVX2-only CPU OpenBLAS's own detection is kept (0.3.21 names AMD Zen 3
//     "Zen", whose sgemm matches or beats forcing "Haswell"); the table records the core it
//     chose. The GPU baselines (torch) come from bench/kernels/torch_baselines.py.
// Weights are random, made once per layer shape and kind and kept across M (on a device the host's
// weight generation would otherwise take much of a short session). Each point: a warm-up call,
// then `reps` timed batches (≥ 0.2 s or ≥ 1 call each), median of
// the per-call time. For M ≤ 64 (memory-bound) the weights rotate through enough copies to
// exceed twice the last-level cache (on a GPU backend at least twice a 50 MB L2). Writes <out>/kernels-<backend>.md and
// .csv and, when /usr/bin/python3 has matplotlib, <out>/kernels-<backend>.png (bench/kernels/plot.py).
//
// Usage: lowbit-bench-kernels [--backend cpu|cpu-avx2|cpu-generic|cuda|auto] [--threads N] [--ms 1,16,64,256,1024,4096]
//          [--shapes llama3-8b|small] [--ops w8a8,w8a8_quant,fp8,w4a16,quant_int8,sgemm]
//          [--reps 3] [--out bench-out]
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/dtype.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"

#ifdef LOWBIT_BENCH_OPENBLAS
#include <cblas.h>
#endif
#if LOWBIT_KERNELS_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace lowbit::kernels {
namespace {

struct Options {
  std::string backend = "cpu";
  int threads = 0;
  std::vector<int64_t> ms = {1, 16, 64, 256, 1024, 4096};
  std::string shapes = "llama3-8b";
  std::vector<std::string> ops = {"sgemm", "w8a8", "w8a8_quant", "fp8", "w4a16", "quant_int8"};
  int reps = 3;
  std::string out = "bench-out";
};

std::vector<std::string> Split(const std::string& s) {
  std::vector<std::string> v;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) v.push_back(item);
  return v;
}

struct KN {
  int64_t k, n;
  const char* name;
};

std::vector<KN> ShapeSet(const std::string& name) {
  if (name == "small") return {{1024, 1024, "small"}};
  return {{4096, 6144, "qkv_proj"}, {4096, 4096, "o_proj"}, {4096, 28672, "gate_up_proj"}, {14336, 4096, "down_proj"}};
}

double Now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

using CallFn = std::function<Status(int64_t)>;  // one timed call; i = call index (rotating weight copies)

void CheckOrExit(const Status& s) {
  if (s.ok()) return;
  std::fprintf(stderr, "%s\n", s.ToString().c_str());
  std::exit(1);
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Per-call seconds of fn replayed from a CUDA graph of kGraphCalls captured calls: the kernels
// without the host's launch cost, as a caller that replays graphs (vLLM's decode) sees them.
// 0 when the calls cannot be captured (a path that synchronizes or allocates) or without CUDA.
constexpr int kGraphCalls = 64;
double TimeGraph(Backend* b, int reps, double one, const CallFn& fn, int64_t* call) {
#if LOWBIT_KERNELS_HAVE_CUDA
  cudaStream_t s = nullptr;
  if (cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  double result = 0;
  cudaGraph_t g = nullptr;
  cudaGraphExec_t e = nullptr;
  if (b->SetStream(s).ok() && cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed) == cudaSuccess) {
    bool ok = true;
    for (int i = 0; i < kGraphCalls && ok; ++i) ok = fn((*call)++).ok();
    const bool ended = cudaStreamEndCapture(s, &g) == cudaSuccess;  // ends the capture whatever happened
    if (ok && ended && cudaGraphInstantiate(&e, g, 0) == cudaSuccess && cudaGraphLaunch(e, s) == cudaSuccess &&
        cudaStreamSynchronize(s) == cudaSuccess) {
      const int64_t launches = std::max<int64_t>(1, static_cast<int64_t>(0.05 / (one * kGraphCalls)));
      std::vector<double> per;
      for (int r = 0; r < reps && ok; ++r) {
        const double t0 = Now();
        for (int64_t l = 0; l < launches && ok; ++l) ok = cudaGraphLaunch(e, s) == cudaSuccess;
        ok = ok && cudaStreamSynchronize(s) == cudaSuccess;
        per.push_back((Now() - t0) / static_cast<double>(launches * kGraphCalls));
      }
      if (ok) result = Median(per);
    }
  }
  (void)cudaGetLastError();
  if (e) cudaGraphExecDestroy(e);
  if (g) cudaGraphDestroy(g);
  CheckOrExit(b->SetStream(nullptr));  // back to the default stream, after s's work
  cudaStreamDestroy(s);
  return result;
#else
  (void)b, (void)reps, (void)one, (void)fn, (void)call;
  return 0;
#endif
}

struct Timing {
  double loop = 0;   // median per-call seconds, calls issued one after another from the host
  double graph = 0;  // the same replayed from a CUDA graph (0: not measured)
  Status error;      // a call failed: the point is reported and skipped, the run goes on
};

// fn(0) warms up; `reps` timed batches of ≥ 0.2 s (or one call). With `graph`, also TimeGraph.
Timing TimeIt(Backend* b, int reps, bool graph, const CallFn& fn) {
  Timing t;
  if (!(t.error = fn(0)).ok()) return t;
  (void)b->Synchronize();
  double t0 = Now();
  if (!(t.error = fn(1)).ok()) return t;
  (void)b->Synchronize();
  const double one = std::max(Now() - t0, 1e-7);
  const int64_t iters = std::max<int64_t>(1, static_cast<int64_t>(0.2 / one));
  std::vector<double> per;
  int64_t call = 2;
  for (int r = 0; r < reps; ++r) {
    (void)b->Synchronize();
    t0 = Now();
    for (int64_t i = 0; i < iters && t.error.ok(); ++i) t.error = fn(call++);
    if (!t.error.ok()) return t;
    (void)b->Synchronize();
    per.push_back((Now() - t0) / iters);
  }
  t.loop = Median(per);
  if (graph) t.graph = TimeGraph(b, reps, t.loop, fn, &call);
  return t;
}

constexpr int64_t kGpuL2Bytes = 50ll << 20;

int64_t LastLevelCache() {
  long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
  return l3 > 0 ? l3 : 32ll << 20;
}

std::string CpuModel() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown CPU";
}

std::string Commit() {
  // A bundle run on another machine (scripts/device-kernels.sh) names its commit here.
  if (const char* c = std::getenv("LOWBIT_COMMIT"); c != nullptr && *c != '\0') return c;
  std::string cmd = std::string("git -C ") + LOWBIT_SOURCE_DIR + " rev-parse --short HEAD 2>/dev/null";
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return "unknown";
  char buf[64] = {0};
  if (!fgets(buf, sizeof buf, p)) buf[0] = 0;
  pclose(p);
  std::string s(buf);
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
  return s.empty() ? "unknown" : s;
}

struct Row {
  std::string op, shape;
  int64_t m, k, n;
  double us, tflops, tbs;
  double us_graph;     // CUDA: per call replayed from a graph (no host launch cost); 0 if not measured
  double ratio_sgemm;  // t_sgemm / t_op; 0 if none
};

struct Rng {
  uint64_t s = 88172645463325252ull;
  uint64_t Next() {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return s;
  }
};

class Bench {
 public:
  Bench(Options o, std::unique_ptr<Backend> b) : o_(std::move(o)), b_(std::move(b)) {}

  void* Dev(size_t bytes, const void* host = nullptr) {
    void* p = nullptr;
    Status s = b_->Alloc(bytes, &p);
    if (!s.ok()) {
      std::fprintf(stderr, "alloc: %s\n", s.ToString().c_str());
      std::exit(1);
    }
    if (host) (void)b_->CopyIn(p, host, bytes);
    owned_.push_back(p);
    return p;
  }
  void FreeAll() {
    for (void* p : owned_) b_->Free(p);
    owned_.clear();
  }

  // The cache the rotation must defeat: the CPU's last level, or on a GPU backend its L2 (50 MB on
  // an H100 / H200, the size torch_baselines.py assumes, so both sides rotate alike).
  int Copies(int64_t m, size_t weight_bytes) const {
    if (m > 64) return 1;
    const int64_t cache = Gpu() ? kGpuL2Bytes : LastLevelCache();
    return static_cast<int>(std::clamp<int64_t>((2 * cache + weight_bytes - 1) / weight_bytes, 1, 16));
  }

  void Run() {
    bool want_sgemm = std::find(o_.ops.begin(), o_.ops.end(), "sgemm") != o_.ops.end();
#ifndef LOWBIT_BENCH_OPENBLAS
    want_sgemm = false;
#endif
    if (b_->name().rfind("cpu", 0) != 0 || b_->name() == "cpu-ref") want_sgemm = false;
    for (const KN& kn : ShapeSet(o_.shapes)) {
      for (int64_t m : o_.ms) {
        t_sgemm_ = 0;
        if (want_sgemm) t_sgemm_ = RunSgemm(kn, m);
        for (const std::string& op : o_.ops)
          if (op != "sgemm") RunOp(op, kn, m);
        FreeAll();
      }
      weights_.clear();
    }
  }

  // The prepared weights of the current layer shape for one kind ("int8" for w8a8 and
  // w8a8_quant, "fp8", "int4"), at least `copies` of them: made once per shape and kept across M
  // (an M that rotates through more copies adds them), so the host generates each weight once.
  // Null (the error printed) when a weight cannot be prepared.
  const std::vector<std::unique_ptr<PreparedWeight>>* Weights(const std::string& kind, const KN& kn, int copies) {
    auto& v = weights_[kind];
    const int64_t k = kn.k, n = kn.n;
    while (static_cast<int>(v.size()) < copies) {
      std::unique_ptr<PreparedWeight> pw;
      Status st;
      if (kind == "int4") {
        std::vector<int32_t> packed(n * (k / 8));
        FillRandom(packed.data(), packed.size() * 4, ~0ull);
        std::vector<uint16_t> sc(n * (k / 128), FloatToBf16(0.01f));
        Int4WeightSource src;
        src.weight_packed = packed.data();
        src.n = n;
        src.k = k;
        src.group_size = 128;
        src.scale = {sc.data(), DType::kBF16, static_cast<int64_t>(sc.size())};
        st = b_->PrepareInt4(src, &pw);
      } else {
        std::vector<uint8_t> w(n * k);
        FillRandom(w.data(), w.size(), 0x6F6F6F6F6F6F6F6Full);  // no FP8 NaN codes
        std::vector<float> wscale(n, 0.01f);
        if (kind == "fp8")
          st = b_->PrepareFp8({w.data(), n, k, {wscale.data(), DType::kF32, n}}, &pw);
        else
          st = b_->PrepareInt8({reinterpret_cast<int8_t*>(w.data()), n, k, {wscale.data(), DType::kF32, n}}, &pw);
      }
      if (!st.ok()) {
        std::fprintf(stderr, "prepare %s %s: %s\n", kind.c_str(), kn.name, st.ToString().c_str());
        return nullptr;
      }
      v.push_back(std::move(pw));
    }
    return &v;
  }

  // Random bytes (8 per generator step), each word masked.
  void FillRandom(void* p, size_t bytes, uint64_t mask) {
    auto* b = static_cast<uint8_t*>(p);
    for (size_t i = 0; i < bytes; i += 8) {
      const uint64_t r = wrng_.Next() & mask;
      std::memcpy(b + i, &r, std::min<size_t>(8, bytes - i));
    }
  }

  bool Gpu() const { return b_->name().rfind("cpu", 0) != 0; }
  // On a GPU backend the calls of a few µs, where the host's launch cost can exceed the kernel's,
  // are also timed replayed from a CUDA graph: the GEMMs at M ≤ 256 and the quantization always.
  bool GraphTimed(const std::string& op, int64_t m) const { return Gpu() && (m <= 256 || op == "quant_int8"); }

  // Prints the point and appends it to the CSV at once (a run cut short keeps what it measured);
  // a failed point is reported and skipped. Returns the loop time (0: skipped).
  double Record(const std::string& op, const KN& kn, int64_t m, const Timing& tm, double flops, double bytes) {
    if (!tm.error.ok()) {
      std::fprintf(stderr, "%s %s M=%lld: %s (point skipped)\n", op.c_str(), kn.name, (long long)m,
                   tm.error.ToString().c_str());
      return 0;
    }
    const double t = tm.loop;
    Row r{op,
          kn.name,
          m,
          kn.k,
          kn.n,
          t * 1e6,
          flops / t / 1e12,
          bytes / t / 1e12,
          tm.graph * 1e6,
          op != "sgemm" && op != "quant_int8" && t_sgemm_ > 0 ? t_sgemm_ / t : 0};
    rows_.push_back(r);
    if (!csv_.is_open()) {
      csv_.open(o_.out + "/kernels-" + b_->name() + ".csv");
      csv_ << "op,shape,m,k,n,us,tflops,tbs,ratio_sgemm,us_graph\n";
    }
    csv_ << r.op << "," << r.shape << "," << r.m << "," << r.k << "," << r.n << "," << r.us << "," << r.tflops << ","
         << r.tbs << "," << r.ratio_sgemm << "," << r.us_graph << std::endl;
    std::printf("%-11s %-13s M=%-5lld K=%-6lld N=%-6lld %10.1f us %8.3f TFLOP/s %7.3f TB/s", op.c_str(), kn.name,
                (long long)m, (long long)kn.k, (long long)kn.n, r.us, r.tflops, r.tbs);
    if (tm.graph > 0) std::printf("  graph %8.2f us %7.3f TB/s", r.us_graph, bytes / tm.graph / 1e12);
    std::printf("\n");
    std::fflush(stdout);
    return t;
  }

  double RunSgemm(const KN& kn, int64_t m) {
#ifdef LOWBIT_BENCH_OPENBLAS
    const int64_t k = kn.k, n = kn.n;
    const int copies = Copies(m, n * k * 4);
    std::vector<std::vector<float>> w(copies, std::vector<float>(n * k));
    Rng rng;
    for (auto& c : w)
      for (auto& v : c) v = static_cast<float>(static_cast<int64_t>(rng.Next() % 2001) - 1000) * 1e-3f;
    std::vector<float> x(m * k, 0.5f), y(m * n);
    const Timing t = TimeIt(b_.get(), o_.reps, false, [&](int64_t i) {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(m), static_cast<int>(n),
                  static_cast<int>(k), 1.0f, x.data(), static_cast<int>(k), w[i % copies].data(), static_cast<int>(k),
                  0.0f, y.data(), static_cast<int>(n));
      return Status::Ok();
    });
    return Record("sgemm", kn, m, t, 2.0 * m * n * k, 4.0 * (n * k + m * k + m * n));
#else
    return 0;
#endif
  }

  double RunOp(const std::string& op, const KN& kn, int64_t m) {
    const int64_t k = kn.k, n = kn.n;
    Rng rng;
    std::vector<uint16_t> xb(m * k);
    for (auto& v : xb) v = FloatToBf16(static_cast<float>(static_cast<int64_t>(rng.Next() % 2001) - 1000) * 1e-3f);
    if (op == "quant_int8") {
      if (!quant_done_.insert({m, k}).second) return 0;  // the same (M, K) for another layer shape
      void* dx = Dev(xb.size() * 2, xb.data());
      void* dq = Dev(m * k);
      void* ds = Dev(m * 4);
      const Timing t = TimeIt(b_.get(), o_.reps, GraphTimed(op, m), [&](int64_t) {
        return b_->QuantizeInt8PerToken(DType::kBF16, dx, m, k, static_cast<int8_t*>(dq), static_cast<float*>(ds));
      });
      return Record(op, kn, m, t, 0.0, 3.0 * m * k + 4.0 * m);
    }
    const bool fp8 = op == "fp8", w4 = op == "w4a16";
    size_t wbytes = w4 ? n * k / 2 + (n * k / 128) * 2 : n * k;
    const int copies = Copies(m, wbytes);
    const auto* pws = Weights(w4 ? "int4" : fp8 ? "fp8" : "int8", kn, copies);
    if (pws == nullptr) return 0;
    std::vector<uint8_t> xq(m * k);
    FillRandom(xq.data(), xq.size(), 0x6F6F6F6F6F6F6F6Full);
    std::vector<float> xs(m, 0.02f);
    void* dxb = Dev(xb.size() * 2, xb.data());
    void* dxq = Dev(xq.size(), xq.data());
    void* dxs = Dev(m * 4, xs.data());
    void* dy = Dev(m * n * 2);
    GemmArgs a;
    a.m = m;
    a.x = w4 ? dxb : dxq;
    a.x_dtype = w4 ? DType::kBF16 : fp8 ? DType::kF8E4M3 : DType::kI8;
    a.x_scale = static_cast<const float*>(dxs);
    a.x_scale_count = m;
    a.y = dy;
    a.y_dtype = DType::kBF16;
    const Timing t = TimeIt(b_.get(), o_.reps, GraphTimed(op, m), [&](int64_t i) {
      a.w = (*pws)[i % copies].get();
      if (op == "w8a8_quant") {
        Status q =
            b_->QuantizeInt8PerToken(DType::kBF16, dxb, m, k, static_cast<int8_t*>(dxq), static_cast<float*>(dxs));
        if (!q.ok()) return q;
      }
      return w4 ? b_->GemmW4A16(a) : fp8 ? b_->GemmFp8(a) : b_->GemmW8A8(a);
    });
    const double act_bytes = (w4 || op == "w8a8_quant") ? 2.0 * m * k : 1.0 * m * k;
    return Record(op, kn, m, t, 2.0 * m * n * k, wbytes + act_bytes + 2.0 * m * n);
  }

  // The Markdown table and the plot (the CSV was written point by point).
  void Write(const std::string& cmdline) {
    std::string base = o_.out + "/kernels-" + b_->name();
    csv_.close();
    std::ofstream md(base + ".md");
    const char* core = std::getenv("OPENBLAS_CORETYPE");
    md << "Command: `" << cmdline << "`  \n";
    md << "Device: " << CpuModel() << " (kernels ISA: " << CpuIsa() << "), backend `" << b_->name() << "`, "
       << o_.threads << " threads (kernels and OpenBLAS)";
    if (b_->name().rfind("cpu", 0) == 0) {
      md << ", OPENBLAS_CORETYPE=" << (core ? core : "(unset)");
#ifdef LOWBIT_BENCH_OPENBLAS
      md << " (OpenBLAS core: " << openblas_get_corename() << ")";
#endif
    }
    md << "  \nCommit: " << Commit() << "  \n";
    md << "µs: median per call; TFLOP/s = 2·M·N·K / t; TB/s = (weights in their format + activations + outputs) / t; "
          "× sgemm = t(OpenBLAS sgemm, same M, K, N, same run) / t; µs (graph): per call when " +
              std::to_string(kGraphCalls) +
              " calls are replayed from a CUDA graph (GPU, M ≤ 256 and quantization: no host launch cost).\n\n";
    md << "| op | layer (K×N) | M | µs | TFLOP/s | TB/s | × sgemm | µs (graph) |\n"
          "|---|---|---:|---:|---:|---:|---:|---:|\n";
    char buf[512];
    for (const Row& r : rows_) {
      std::snprintf(buf, sizeof buf, "| %s | %s %lld×%lld | %lld | %.1f | %.3f | %.3f | %s | %s |\n", r.op.c_str(),
                    r.shape.c_str(), (long long)r.k, (long long)r.n, (long long)r.m, r.us, r.tflops, r.tbs,
                    r.ratio_sgemm > 0 ? (std::to_string(r.ratio_sgemm).substr(0, 5) + "×").c_str() : "",
                    r.us_graph > 0 ? std::to_string(r.us_graph).substr(0, 6).c_str() : "");
      md << buf;
    }
    md.close();
    std::printf("wrote %s.md and %s.csv\n", base.c_str(), base.c_str());
    std::string plot = std::string("/usr/bin/python3 ") + LOWBIT_SOURCE_DIR + "/bench/kernels/plot.py " + base +
                       ".csv " + base + ".png";
    if (std::system(plot.c_str()) != 0)
      std::printf("no PNG (needs /usr/bin/python3 with matplotlib): %s\n", plot.c_str());
  }

 private:
  Options o_;
  std::unique_ptr<Backend> b_;
  std::vector<void*> owned_;
  std::vector<Row> rows_;
  std::map<std::string, std::vector<std::unique_ptr<PreparedWeight>>> weights_;  // see Weights()
  Rng wrng_;                                                                     // weights' bytes
  double t_sgemm_ = 0;                                // the sgemm time of the current (shape, M), 0 if none
  std::set<std::pair<int64_t, int64_t>> quant_done_;  // (M, K) already timed for quant_int8
  std::ofstream csv_;
};

// OpenBLAS reads OPENBLAS_CORETYPE when it loads; set it and re-exec (design.md "CPU BLAS").
void EnsureCoreType(char** argv) {
#ifdef LOWBIT_BENCH_OPENBLAS
  if (std::getenv("OPENBLAS_CORETYPE") != nullptr) return;
  __builtin_cpu_init();
  if (!(__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512dq")))
    return;
  setenv("OPENBLAS_CORETYPE", "SkylakeX", 1);
  execv("/proc/self/exe", argv);
#else
  (void)argv;
#endif
}

}  // namespace
}  // namespace lowbit::kernels

int main(int argc, char** argv) {
  using namespace lowbit::kernels;
  EnsureCoreType(argv);
  Options o;
  std::string cmdline = "lowbit-bench-kernels";
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    cmdline += " " + a;
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      cmdline += std::string(" ") + argv[i + 1];
      return argv[++i];
    };
    if (a == "--backend")
      o.backend = val();
    else if (a == "--threads")
      o.threads = std::atoi(val().c_str());
    else if (a == "--ms") {
      o.ms.clear();
      for (auto& s : Split(val())) o.ms.push_back(std::atoll(s.c_str()));
    } else if (a == "--shapes")
      o.shapes = val();
    else if (a == "--ops")
      o.ops = Split(val());
    else if (a == "--reps")
      o.reps = std::atoi(val().c_str());
    else if (a == "--out")
      o.out = val();
    else {
      std::fprintf(stderr, "unknown flag %s (see the comment at the top of bench_kernels.cc)\n", a.c_str());
      return 2;
    }
  }
  if (o.threads <= 0) o.threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
#ifdef LOWBIT_BENCH_OPENBLAS
  openblas_set_num_threads(o.threads);
#endif
  BackendOptions bo;
  bo.threads = o.threads;
  std::unique_ptr<Backend> b;
  Status s = MakeBackend(o.backend, bo, &b);
  if (!s.ok()) {
    std::fprintf(stderr, "%s\n", s.ToString().c_str());
    return 1;
  }
  std::string mk = "mkdir -p '" + o.out + "'";
  if (std::system(mk.c_str()) != 0) return 1;
  Bench bench(o, std::move(b));
  bench.Run();
  bench.Write(cmdline);
  return 0;
}
