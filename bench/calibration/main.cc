// lowbit-bench-calibration: the calibration hot paths against the machine's own sgemm rate,
// measured in one run (shared/design.md §7: ratios side by side, not absolute numbers).
//   * OpenBLAS sgemm, M = N = K = 4096 (the reference rate);
//   * Hessian accumulation (HessianAccumulator::Add, an ssyrk) at K = 4096, tokens/s;
//   * CholeskyInverseUpper at K = 4096 (GPTQ's inverse factor);
//   * GPTQ of 4096×4096 and 14336×4096 layers, W4A16 group 128 symmetric, actorder "weight"
//     (llm-compressor's default), H from correlated random inputs.
// FLOPs counted for what the code does:
//   sgemm 2MNK; Gram rows·K² (ssyrk: K(K+1)/2 outputs × 2 flops per token);
//   inverse factor 2K³/3 (spotrf K³/3 + strtri K³/3);
//   GPTQ = 2K³/3 + lazy Σ_blocks 2·N·nb·(K − i2) + in-block Σ_blocks N·nb·(nb − 1)
//   (≈ 2K³/3 + N·K² + N·K·B); the per-weight quantization (~10 flops) is not counted.
// The machine may be shared and its load drifts within a run, so every timed run of a subject
// is paired with an sgemm run right before it: the reported fraction is the median over reps
// of (subject rate / adjacent sgemm rate); times are medians. Prints a Markdown table; --out
// FILE also writes it.
//   lowbit-bench-calibration [--reps=3] [--tokens=2048] [--out=FILE] [--quick]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_format.h"
#include "calibrator/compute.h"
#include "calibrator/gptq.h"
#include "calibrator/hessian.h"
#include "common/blas_env.h"

namespace lowbit {
namespace {

double MedianSeconds(int reps, const std::function<void()>& fn) {
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    auto start = std::chrono::steady_clock::now();
    fn();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

std::vector<float> Gaussian(int64_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

// Correlated inputs like a transformer's: rank-64 structure plus noise, channel magnitudes
// spread over ~1.5 decades, a few outlier channels. Built with a GEMM (Compute) to stay fast.
std::vector<float> CorrelatedInputs(Compute& c, int64_t tokens, int64_t k, uint32_t seed) {
  const int64_t rank = 64;
  std::vector<float> z = Gaussian(tokens * rank, seed), a = Gaussian(rank * k, seed + 1, 0.125f);
  std::vector<float> x = Gaussian(tokens * k, seed + 2, 0.1f);
  c.Gemm(false, tokens, k, rank, 1.0f, z.data(), rank, a.data(), k, 1.0f, x.data(), k);
  std::vector<float> scale(k);
  std::mt19937 rng(seed + 3);
  std::uniform_real_distribution<float> u(0.0f, 1.5f);
  for (int64_t j = 0; j < k; ++j) scale[j] = std::pow(10.0f, u(rng)) * (j % 509 == 0 ? 20.0f : 1.0f);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t j = 0; j < k; ++j) x[t * k + j] *= scale[j];
  }
  return x;
}

struct Row {
  std::string what, size;
  double seconds, flops;
  double fraction;  // median of (rate / adjacent sgemm rate)
  std::string extra;
};

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Times `fn` reps times, each right after one run of `sgemm` (sgemm_flops): returns the
// median time of fn and the median of the paired rate ratios.
std::pair<double, double> Paired(int reps, const std::function<void()>& sgemm, double sgemm_flops,
                                 const std::function<void()>& fn, double flops) {
  std::vector<double> times, ratios;
  for (int i = 0; i < reps; ++i) {
    const double g = MedianSeconds(1, sgemm);
    const double t = MedianSeconds(1, fn);
    times.push_back(t);
    ratios.push_back((flops / t) / (sgemm_flops / g));
  }
  return {Median(times), Median(ratios)};
}

int Run(int argc, char** argv) {
  int reps = 3;
  int64_t tokens = 2048;
  bool quick = false;
  std::string out;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--reps=", 0) == 0) reps = std::max(1, std::atoi(a.c_str() + 7));
    else if (a.rfind("--tokens=", 0) == 0) tokens = std::atoll(a.c_str() + 9);
    else if (a.rfind("--out=", 0) == 0) out = a.substr(6);
    else if (a == "--out" && i + 1 < argc) out = argv[++i];
    else if (a == "--quick") quick = true;
    else {
      std::fprintf(stderr, "usage: %s [--reps=3] [--tokens=2048] [--out=FILE] [--quick]\n", argv[0]);
      return 2;
    }
  }
  Compute& c = CpuCompute();
  const int64_t K = quick ? 1024 : 4096;
  std::vector<Row> rows;

  // sgemm reference rate.
  const int64_t gn = K;
  std::vector<float> ga = Gaussian(gn * gn, 1), gb = Gaussian(gn * gn, 2), gy(gn * gn);
  auto sgemm = [&] { c.Gemm(false, gn, gn, gn, 1.0f, ga.data(), gn, gb.data(), gn, 0.0f, gy.data(), gn); };
  const double sgemm_flops = 2.0 * gn * gn * gn;
  sgemm();  // warm up
  {
    double s = MedianSeconds(reps, sgemm);
    rows.push_back({"sgemm (OpenBLAS)", absl::StrFormat("M=N=K=%d", gn), s, sgemm_flops, 1.0, ""});
  }

  // Hessian accumulation.
  std::vector<float> x = CorrelatedInputs(c, tokens, K, 3);
  std::vector<float> h;
  {
    HessianAccumulator acc(K);
    const double flops = static_cast<double>(tokens) * K * K;
    auto [s, f] = Paired(reps, sgemm, sgemm_flops, [&] { acc.Add(c, x.data(), tokens, tokens / 512); }, flops);
    rows.push_back({"Hessian accumulation (AddGram)", absl::StrFormat("K=%d, %d tokens/batch", K, tokens), s, flops, f,
                    absl::StrFormat("%.0f tokens/s", tokens / s)});
    h = acc.Finish();
  }

  // Inverse Cholesky factor alone.
  {
    std::vector<float> hd;
    const double flops = 2.0 * K * K * K / 3.0;
    auto [s, f] = Paired(reps, sgemm, sgemm_flops, [&] {
      hd = h;
      for (int64_t i = 0; i < K; ++i) hd[i * K + i] += 0.01f * h[i * K + i];
      if (!c.CholeskyInverseUpper(K, hd.data()).ok()) std::fprintf(stderr, "Cholesky failed\n");
    }, flops);
    rows.push_back({"CholeskyInverseUpper", absl::StrFormat("K=%d", K), s, flops, f, "includes copying H"});
  }

  // GPTQ.
  QuantArgs args;
  args.num_bits = 4;
  args.symmetric = true;
  args.group_size = 128;
  args.strategy = Strategy::kGroup;
  args.actorder = ActOrder::kWeight;
  const GptqOptions options;
  for (int64_t n : {K, quick ? 3584 : int64_t{14336}}) {
    std::vector<float> w = Gaussian(n * K, 10 + static_cast<uint32_t>(n), 0.02f);
    bool fell_back = false;
    GptqResult::Phases phases;
    double flops = 2.0 * K * K * K / 3.0;
    const int64_t B = options.block_size;
    for (int64_t i1 = 0; i1 < K; i1 += B) {
      const int64_t i2 = std::min(K, i1 + B), nb = i2 - i1;
      flops += 2.0 * n * nb * (K - i2) + static_cast<double>(n) * nb * (nb - 1);
    }
    auto [s, f] = Paired(reps, sgemm, sgemm_flops, [&] {
      auto r = QuantizeLinearGptq("bench", w, n, K, h, args, DType::kBF16, options, c);
      if (!r.ok()) {
        std::fprintf(stderr, "%s\n", std::string(r.status().message()).c_str());
        std::exit(1);
      }
      fell_back = r->fell_back_to_rtn;
      phases = r->phases;
    }, flops);
    rows.push_back({"GPTQ W4A16 g128 actorder=weight", absl::StrFormat("%d×%d", n, K), s, flops, f,
                    absl::StrFormat("prepare %.2f s, inverse factor %.2f s, column loop %.2f s, lazy GEMMs %.2f s, "
                                    "finish %.2f s (last run)%s",
                                    phases.prepare, phases.factor, phases.columns, phases.lazy_updates, phases.finish,
                                    fell_back ? "; FELL BACK TO RTN" : "")});
  }

  std::string table = "| measurement | size | median time | GFLOP/s | fraction of sgemm rate | notes |\n"
                      "|---|---|---|---|---|---|\n";
  for (const Row& r : rows) {
    table += absl::StrFormat("| %s | %s | %.3f s | %.1f | %.0f%% | %s |\n", r.what, r.size, r.seconds,
                             r.flops / r.seconds / 1e9, 100.0 * r.fraction, r.extra);
  }
  const char* core = std::getenv("OPENBLAS_CORETYPE");
  table += absl::StrFormat(
      "\n%s, OPENBLAS_CORETYPE=%s, %d runs each; fraction = median of (rate / rate of an sgemm run just before).\n",
      c.Name(), core ? core : "(unset)", reps);
  std::fputs(table.c_str(), stdout);
  if (!out.empty()) {
    std::ofstream f(out);
    f << table;
    if (!f) {
      std::fprintf(stderr, "cannot write %s\n", out.c_str());
      return 1;
    }
  }
  return 0;
}

}  // namespace
}  // namespace lowbit

int main(int argc, char** argv) {
  lowbit::EnsureBlasCoreType(argv);
  return lowbit::Run(argc, argv);
}
