// lowbit-forward: runs a Llama-family model's forward pass on the CPU (the calibrator's
// forward, layer by layer) and writes the logits; also a throughput probe.
//   lowbit-forward --model DIR (--tokens "1,2,3;4,5" | --random 4x512) [--out logits.bin]
//                  [--repeat N] [--no_lm_head] [--bench_sgemm]
// --out: float32 little-endian logits [total tokens, vocab], sequences in order.
// Timing goes to stderr: weight conversion and forward separately, tokens/s and GFLOP/s.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "calibrator/compute.h"
#include "calibrator/llama.h"
#include "common/blas_env.h"
#include "common/file_util.h"
#include "common/flags_help.h"

ABSL_FLAG(std::string, model, "", "model directory (config.json + safetensors)");
ABSL_FLAG(std::string, tokens, "", "token ids: sequences separated by ';', ids by ','");
ABSL_FLAG(std::string, random, "", "SEQSxLEN random token ids instead of --tokens");
ABSL_FLAG(uint64_t, seed, 1, "seed for --random");
ABSL_FLAG(std::string, out, "", "write the logits here (float32 [tokens, vocab])");
ABSL_FLAG(int32_t, repeat, 1, "run the layer forward this many times (timing; the output is from the last)");
ABSL_FLAG(bool, no_lm_head, false, "skip the final norm and lm_head");
ABSL_FLAG(bool, bench_sgemm, false, "also time layer 0 against a [tokens, hidden] x [hidden, intermediate] sgemm, interleaved, --repeat times");

namespace {

using Clock = std::chrono::steady_clock;
double Seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

int Fail(const std::string& msg) {
  std::fprintf(stderr, "lowbit-forward: %s\n", msg.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  lowbit::EnsureBlasCoreType(argv);
  lowbit::HelpListsFlagsOf(__FILE__);
  absl::SetProgramUsageMessage("lowbit-forward --model DIR (--tokens \"1,2;3\" | --random 4x512) [--out F]");
  absl::ParseCommandLine(argc, argv);
  const std::string dir = absl::GetFlag(FLAGS_model);
  const std::string tokens_flag = absl::GetFlag(FLAGS_tokens), random_flag = absl::GetFlag(FLAGS_random);
  if (dir.empty() || tokens_flag.empty() == random_flag.empty()) {
    std::fprintf(stderr, "usage: lowbit-forward --model DIR (--tokens \"1,2,3;4,5\" | --random SEQSxLEN) [--out F]\n");
    return 2;
  }
  absl::StatusOr<std::unique_ptr<lowbit::LlamaModel>> model = lowbit::LlamaModel::Open(dir);
  if (!model.ok()) return Fail(std::string(model.status().message()));
  const lowbit::LlamaConfig& c = (*model)->config();

  std::vector<int32_t> ids;
  std::vector<int64_t> lengths;
  if (!tokens_flag.empty()) {
    for (absl::string_view seq : absl::StrSplit(tokens_flag, ';')) {
      int64_t n = 0;
      for (absl::string_view t : absl::StrSplit(seq, ',', absl::SkipWhitespace())) {
        int32_t id;
        if (!absl::SimpleAtoi(t, &id)) return Fail("--tokens: '" + std::string(t) + "' is not an integer");
        ids.push_back(id);
        ++n;
      }
      lengths.push_back(n);
    }
  } else {
    std::vector<std::string> parts = absl::StrSplit(random_flag, 'x');
    int64_t seqs = 0, len = 0;
    if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &seqs) || !absl::SimpleAtoi(parts[1], &len) || seqs <= 0 ||
        len <= 0) {
      return Fail("--random must be SEQSxLEN, e.g. 4x512");
    }
    uint64_t s = absl::GetFlag(FLAGS_seed) * 0x9E3779B97F4A7C15ull + 1;
    for (int64_t i = 0; i < seqs * len; ++i) {
      s ^= s << 13, s ^= s >> 7, s ^= s << 17;
      ids.push_back(static_cast<int32_t>(s % static_cast<uint64_t>(c.vocab_size)));
    }
    lengths.assign(seqs, len);
  }
  const lowbit::SequenceSpans spans = lowbit::SequenceSpans::FromLengths(lengths);
  const int64_t rows = spans.num_rows();
  absl::StatusOr<std::vector<float>> hidden = (*model)->Embed(ids);
  if (!hidden.ok()) return Fail(std::string(hidden.status().message()));

  lowbit::Compute& compute = lowbit::CpuCompute();
  const int repeat = std::max(1, absl::GetFlag(FLAGS_repeat));
  double load_s = 0, fwd_s = 0;
  std::vector<float> input;
  for (int64_t l = 0; l < c.num_layers; ++l) {
    auto t0 = Clock::now();
    absl::StatusOr<lowbit::DecoderLayerWeights> w = (*model)->LoadLayer(l);
    if (!w.ok()) return Fail(std::string(w.status().message()));
    auto t1 = Clock::now();
    load_s += Seconds(t0, t1);
    if (repeat > 1) input = *hidden;
    for (int r = 0; r < repeat; ++r) {
      if (r > 0) *hidden = input;
      auto a = Clock::now();
      absl::Status s = lowbit::DecoderLayerForward(c, *w, compute, spans, hidden->data(), nullptr);
      if (!s.ok()) return Fail(std::string(s.message()));
      fwd_s += Seconds(a, Clock::now());
    }
  }
  // FLOPs of the layer forward: the Linears plus causal attention (QKᵀ and PV over the
  // lower triangle).
  const double lin = 2.0 * c.hidden_size *
                     (2.0 * c.num_heads * c.head_dim + 2.0 * c.num_kv_heads * c.head_dim + 3.0 * c.intermediate_size);
  double att = 0;
  for (int64_t n : lengths) att += 2.0 * 2.0 * c.num_heads * c.head_dim * (n * (n + 1) / 2.0);
  const double flops = (lin * rows + att) * c.num_layers * repeat;
  std::fprintf(stderr,
               "layers: %lld x %d runs, %lld tokens (%zu sequences): forward %.3f s = %.1f tokens/s, %.1f GFLOP/s; "
               "weight conversion %.3f s\n",
               static_cast<long long>(c.num_layers), repeat, static_cast<long long>(rows), lengths.size(), fwd_s,
               rows * c.num_layers * repeat / fwd_s / c.num_layers, flops / fwd_s * 1e-9, load_s);
  if (absl::GetFlag(FLAGS_bench_sgemm)) {
    // Layer 0's forward and an sgemm of the MLP's largest shape, interleaved so that other
    // load on the machine hits both alike; medians of --repeat pairs.
    absl::StatusOr<lowbit::DecoderLayerWeights> w = (*model)->LoadLayer(0);
    if (!w.ok()) return Fail(std::string(w.status().message()));
    absl::StatusOr<std::vector<float>> x0 = (*model)->Embed(ids);
    std::vector<float> x = *x0, a(rows * c.hidden_size, 0.5f), b(c.intermediate_size * c.hidden_size, 0.25f),
                       o(rows * c.intermediate_size);
    auto gemm = [&] {
      compute.Gemm(true, rows, c.intermediate_size, c.hidden_size, 1.0f, a.data(), c.hidden_size, b.data(),
                   c.hidden_size, 0.0f, o.data(), c.intermediate_size);
    };
    gemm();  // warm-up
    std::vector<double> fwd_rate, gemm_rate;
    for (int r = 0; r < repeat; ++r) {
      x = *x0;
      auto t0 = Clock::now();
      absl::Status s = lowbit::DecoderLayerForward(c, *w, compute, spans, x.data(), nullptr);
      auto t1 = Clock::now();
      if (!s.ok()) return Fail(std::string(s.message()));
      gemm();
      auto t2 = Clock::now();
      fwd_rate.push_back(flops / c.num_layers / repeat / Seconds(t0, t1) * 1e-9);
      gemm_rate.push_back(2.0 * rows * c.hidden_size * c.intermediate_size / Seconds(t1, t2) * 1e-9);
    }
    std::sort(fwd_rate.begin(), fwd_rate.end());
    std::sort(gemm_rate.begin(), gemm_rate.end());
    const double f = fwd_rate[repeat / 2], g = gemm_rate[repeat / 2];
    std::fprintf(stderr,
                 "interleaved medians of %d: layer forward %.1f GFLOP/s, sgemm [%lld, %lld] x [%lld, %lld]^T %.1f "
                 "GFLOP/s: forward at %.0f%% of sgemm\n",
                 repeat, f, static_cast<long long>(rows), static_cast<long long>(c.hidden_size),
                 static_cast<long long>(c.intermediate_size), static_cast<long long>(c.hidden_size), g, 100 * f / g);
  }
  if (absl::GetFlag(FLAGS_no_lm_head)) return 0;
  absl::StatusOr<std::vector<float>> norm = (*model)->LoadFinalNorm();
  if (!norm.ok()) return Fail(std::string(norm.status().message()));
  absl::StatusOr<lowbit::LinearWeights> head = (*model)->LoadLmHead();
  if (!head.ok()) return Fail(std::string(head.status().message()));
  std::vector<float> logits = lowbit::LmHeadForward(c, *norm, *head, compute, *hidden, rows);
  const std::string out = absl::GetFlag(FLAGS_out);
  if (!out.empty()) {
    absl::Status s = lowbit::AtomicWriteFile(
        out, std::string_view(reinterpret_cast<const char*>(logits.data()), logits.size() * sizeof(float)));
    if (!s.ok()) return Fail(std::string(s.message()));
  }
  return 0;
}
