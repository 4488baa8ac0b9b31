// lowbit bench-rpc — the services' RPC costs, measured over loopback with both services run
// as child processes (CPU backend, or --bench_backend):
//   * the floor under any RPC on this machine: a loopback TCP round trip between two threads;
//   * Gemm latency at M = 1, K = N = 4096 (a W8A8 o_proj): p50 / p99 end to end, the
//     server-side kernel time from the response, the RPC overhead p50 − kernel p50, and an
//     empty unary call (GetServerInfo) made after each Gemm call, gRPC's own floor here; the same
//     for KServe v2 ModelInfer on the same layer (the runtime's other front end);
//   * Gemm throughput with 1 / 8 / 64 concurrent clients, on a runtime with dynamic batching
//     and on one without (same binary, --batching=false), for o_proj (4096², 16 MiB of int8
//     weights: stays in a 32 MiB L3 between calls) and gate_proj (4096 -> 14336 as in
//     Llama-3-8B, 56 MiB: streamed from memory by every GEMM);
//   * streaming: UploadModel to the calibrator, LoadModelStream to the runtime, FetchResult
//     from the calibrator — MB/s of tensor bytes.
// Writes a Markdown table to --out/bench-rpc.md and prints it.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <random>
#include <thread>

#include "absl/flags/declare.h"
#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "cli/calibrator_client.h"
#include "cli/commands.h"
#include "cli/connection.h"
#include "cli/loopback_probe.h"
#include "cli/runtime_client.h"
#include "cli/service_process.h"
#include "cli/tool_dir.h"
#include "common/file_util.h"
#include "inference/predict_v2.grpc.pb.h"
#include "rpc/status.h"
#include "tools/gen_model/synthetic_llama.h"

ABSL_DECLARE_FLAG(std::string, out);
ABSL_FLAG(double, bench_seconds, 3.0, "bench-rpc: seconds per throughput point");
ABSL_FLAG(int, bench_latency_calls, 300, "bench-rpc: sequential calls for the latency percentiles");
ABSL_FLAG(std::string, bench_clients, "1,8,64", "bench-rpc: concurrent client counts");
ABSL_FLAG(int64_t, bench_hidden, 4096, "bench-rpc: hidden size of the one-layer model (K = N of o_proj)");
ABSL_FLAG(int64_t, bench_intermediate, 14336, "bench-rpc: intermediate size of the model (N of gate_proj)");
ABSL_FLAG(std::string, bench_backend, "cpu", "bench-rpc: --backend of the runtimes (cpu, cuda, auto)");
ABSL_FLAG(std::string, bench_threads, "", "bench-rpc: --threads for the runtimes (default: theirs)");
ABSL_FLAG(int64_t, bench_queue_delay_us, -1,
          "bench-rpc: --max_queue_delay_us of the batching runtime (-1: its default)");

namespace lowbit::cli {
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(p * (v.size() - 1) + 0.5));
  return v[i];
}

// `base` (message and chunk sizes from the flags) for a service this bench started: `address`,
// no token, plaintext.
rpc::ClientConfig PlainLoopback(rpc::ClientConfig base, const std::string& address) {
  base.address = address;
  base.auth_token.clear();
  base.tls_ca_file.clear();
  base.tls_cert_file.clear();
  base.tls_key_file.clear();
  base.tls_server_name.clear();
  return base;
}

// One KServe v2 ModelInfer call of layer model "<model>/<layer>" on x (BF16 [M, K]); returns the
// kernel time the response reports (µs).
absl::StatusOr<double> CallModelInfer(inference::GRPCInferenceService::Stub& stub, const rpc::ClientConfig& config,
                                      const std::string& model, const std::string& layer, const Tensor& x) {
  inference::ModelInferRequest req;
  req.set_model_name(model + "/" + layer);
  auto* in = req.add_inputs();
  in->set_name("x");
  in->set_datatype("BF16");
  in->mutable_shape()->Assign(x.shape().begin(), x.shape().end());
  req.add_raw_input_contents(reinterpret_cast<const char*>(x.bytes().data()), x.nbytes());
  grpc::ClientContext ctx;
  Prepare(&ctx, config);
  inference::ModelInferResponse resp;
  if (grpc::Status st = stub.ModelInfer(&ctx, req, &resp); !st.ok()) return rpc::FromGrpcStatus(st);
  auto it = resp.parameters().find("kernel_us");
  return it == resp.parameters().end() ? 0.0 : it->second.double_param();
}

struct Throughput {
  double rps = 0;
  double mean_batch = 0;
  int64_t errors = 0;
};

// `clients` threads, each with its own channel, calling Gemm back to back for `seconds`.
Throughput MeasureThroughput(const rpc::ClientConfig& config, const std::string& model, const std::string& layer,
                             const Tensor& x, int clients, double seconds) {
  std::atomic<int64_t> done{0}, batched{0}, errors{0};
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      // Separate channels, so requests are not serialized on one HTTP/2 connection.
      rpc::ClientConfig cc = config;
      auto ch = rpc::MakeChannel(cc);
      auto stub = v1::RuntimeService::NewStub(*ch);
      while (!stop.load(std::memory_order_relaxed)) {
        auto r = CallGemm(*stub, cc, model, layer, x, DType::kBF16);
        if (!r.ok()) {
          errors.fetch_add(1);
          continue;
        }
        done.fetch_add(1);
        batched.fetch_add(r->batch_requests);
      }
    });
  }
  const auto t0 = Clock::now();
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop = true;
  for (auto& t : threads) t.join();
  const double s = std::chrono::duration<double>(Clock::now() - t0).count();
  Throughput t;
  t.rps = done.load() / s;
  t.mean_batch = done.load() ? double(batched.load()) / done.load() : 0;
  t.errors = errors.load();
  return t;
}

// The bench's settings, every one checked before anything is started or written.
struct BenchSettings {
  std::vector<int> clients;
  double seconds = 0;
  int latency_calls = 0;
  int64_t hidden = 0, intermediate = 0;
  std::string backend;
  std::vector<std::string> threads_arg;
};

// --bench_clients: a comma-separated list of client counts, each in 1..kMaxClients.
constexpr int kMaxClients = 1024;
absl::StatusOr<std::vector<int>> ParseClients(const std::string& list) {
  std::vector<int> clients;
  for (absl::string_view c : absl::StrSplit(list, ',')) {
    int n = 0;
    if (!absl::SimpleAtoi(c, &n) || n < 1 || n > kMaxClients) {
      return absl::InvalidArgumentError(absl::StrCat("--bench_clients '", list, "': '", std::string(c),
                                                     "' is not a client count in 1..", kMaxClients));
    }
    clients.push_back(n);
  }
  return clients;
}

absl::StatusOr<BenchSettings> ParseSettings() {
  BenchSettings b;
  absl::StatusOr<std::vector<int>> clients = ParseClients(absl::GetFlag(FLAGS_bench_clients));
  if (!clients.ok()) return clients.status();
  b.clients = *clients;
  b.seconds = absl::GetFlag(FLAGS_bench_seconds);
  if (!(b.seconds > 0 && b.seconds <= 3600)) {
    return absl::InvalidArgumentError(absl::StrCat("--bench_seconds ", b.seconds, " is not in (0, 3600]"));
  }
  b.latency_calls = absl::GetFlag(FLAGS_bench_latency_calls);
  if (b.latency_calls < 1 || b.latency_calls > 1000000) {
    return absl::InvalidArgumentError(absl::StrCat("--bench_latency_calls ", b.latency_calls, " is not in 1..1000000"));
  }
  b.hidden = absl::GetFlag(FLAGS_bench_hidden);
  b.intermediate = absl::GetFlag(FLAGS_bench_intermediate);
  for (const auto& [flag, v] :
       {std::pair<const char*, int64_t>{"bench_hidden", b.hidden}, {"bench_intermediate", b.intermediate}}) {
    if (v < 1 || v > 65536) {
      return absl::InvalidArgumentError(absl::StrCat("--", flag, " ", v, " is not in 1..65536"));
    }
  }
  b.backend = absl::GetFlag(FLAGS_bench_backend);
  if (b.backend != "cpu" && b.backend != "cuda" && b.backend != "auto") {
    return absl::InvalidArgumentError(absl::StrCat("--bench_backend '", b.backend, "' is not cpu, cuda or auto"));
  }
  if (const std::string t = absl::GetFlag(FLAGS_bench_threads); !t.empty()) {
    int n = 0;
    if (!absl::SimpleAtoi(t, &n) || n < 1 || n > 4096) {
      return absl::InvalidArgumentError(absl::StrCat("--bench_threads '", t, "' is not a thread count in 1..4096"));
    }
    b.threads_arg.push_back(absl::StrCat("--threads=", n));
  }
  if (const int64_t d = absl::GetFlag(FLAGS_bench_queue_delay_us); d < -1 || d > 10000000) {
    return absl::InvalidArgumentError(absl::StrCat("--bench_queue_delay_us ", d, " is not -1 or in 0..10000000"));
  }
  return b;
}

// The services' settings bench-rpc makes itself, in their environment: no token, no TLS,
// whatever this environment says.
EnvOverrides PlainServiceEnv(const std::string& prefix) {
  EnvOverrides env;
  for (const char* v : {"AUTH_TOKEN", "TLS_CERT", "TLS_KEY", "TLS_CLIENT_CA"}) env["LOWBIT_" + prefix + "_" + v] = "";
  return env;
}

int Bench(const Args& args) {
  if (!args.empty()) return UsageError("bench-rpc", "takes no positional arguments (got '" + args[0] + "')");
  absl::StatusOr<BenchSettings> settings = ParseSettings();
  if (!settings.ok()) return UsageError("bench-rpc", std::string(settings.status().message()));
  const rpc::ClientConfig runtime_base = RuntimeConfig(/*check_address=*/false);
  const rpc::ClientConfig calibrator_base = CalibratorConfig(/*check_address=*/false);
  const fs::path out = fs::absolute(absl::GetFlag(FLAGS_out).empty() ? "bench-rpc-out" : absl::GetFlag(FLAGS_out));
  if (absl::Status s = ClaimToolDir(out, "bench-rpc",
                                    {"state", "models", "checkpoints", "fetched", "rtn.log", "runtime-batching.log",
                                     "runtime-nobatching.log", "calibrator.log", "bench-rpc.md"});
      !s.ok()) {
    return s.code() == absl::StatusCode::kFailedPrecondition ? UsageError("bench-rpc", std::string(s.message()))
                                                             : Fail("bench-rpc", s);
  }
  std::error_code ec;
  fs::create_directories(out / "models", ec);
  fs::create_directories(out / "checkpoints", ec);
  const int64_t hidden = settings->hidden;

  // A one-layer model with K = N = hidden for o_proj, quantized W8A8 by round-to-nearest.
  SyntheticLlamaOptions o;
  o.hidden = hidden;
  o.intermediate = settings->intermediate;
  o.layers = 1;
  o.heads = std::max<int64_t>(1, hidden / 128);
  o.kv_heads = std::max<int64_t>(1, o.heads / 4);
  o.vocab = 512;
  o.outlier_channels = 0;
  const fs::path model_dir = out / "models" / "bench";
  if (auto s = WriteSyntheticLlama(model_dir.string(), o); !s.ok()) return Fail("generate model", s);
  const fs::path ckpt = out / "checkpoints" / "bench-w8a8";
  // No shell: the paths may hold any character.
  absl::StatusOr<int> rtn = RunLogged(FindSiblingBinary("lowbit-rtn", "tools"),
                                      {"--model", model_dir.string(), "--out", ckpt.string(), "--scheme", "W8A8"},
                                      (out / "rtn.log").string());
  if (!rtn.ok()) return Fail("run lowbit-rtn", rtn.status());
  if (*rtn != 0) {
    std::fprintf(stderr, "lowbit bench-rpc: lowbit-rtn failed (exit status %d), see %s\n", *rtn,
                 (out / "rtn.log").c_str());
    return 1;
  }

  auto start_runtime = [&](bool batching, const std::string& log) {
    std::vector<std::string> args = {"serve", "--address=127.0.0.1:0", "--model_root=" + (out / "checkpoints").string(),
                                     "--backend=" + settings->backend,
                                     std::string("--batching=") + (batching ? "true" : "false")};
    args.insert(args.end(), settings->threads_arg.begin(), settings->threads_arg.end());
    if (batching && absl::GetFlag(FLAGS_bench_queue_delay_us) >= 0) {
      args.push_back(absl::StrCat("--max_queue_delay_us=", absl::GetFlag(FLAGS_bench_queue_delay_us)));
    }
    return ServiceProcess::Start(FindSiblingBinary("lowbit-runtime", "runtime"), args, (out / log).string(),
                                 PlainServiceEnv("RUNTIME"));
  };
  std::string md = absl::StrFormat(
      "# lowbit bench-rpc\n\nLoopback, backend %s, W8A8 layers o_proj (K = N = %d) and gate_proj (K = %d, N = %d).\n\n",
      settings->backend, hidden, hidden, o.intermediate);
  const std::string layer = "model.layers.0.self_attn.o_proj";
  // Throughput: a layer whose weights stay in cache between calls, and one streamed from memory.
  const std::vector<std::string> tp_layers = {layer, "model.layers.0.mlp.gate_proj"};
  std::map<std::pair<std::string, int>, double> rps_off;  // (layer, clients) -> Gemm/s without batching
  std::string ratios;
  std::mt19937 rng(0);
  std::normal_distribution<float> nd;
  std::vector<float> xv(hidden);
  for (auto& v : xv) v = nd(rng);
  const Tensor x1 = Tensor::FromFloats(xv, {1, hidden}, DType::kBF16);

  // --- the machine's floor: a loopback TCP round trip between two threads, no RPC stack
  auto tcp = MeasureLoopbackTcpRoundTrip(settings->latency_calls * 10);
  if (!tcp.ok()) return Fail("loopback TCP round trip", tcp.status());
  const double tcp50 = Percentile(*tcp, 0.5);
  absl::StrAppendFormat(&md,
                        "Loopback TCP round trip of one byte between two threads (no RPC stack): p50 %.0f us "
                        "(p10 %.0f, p90 %.0f)\n\n",
                        tcp50, Percentile(*tcp, 0.1), Percentile(*tcp, 0.9));
  std::fprintf(stderr, "loopback TCP round trip: p50 %.0f us\n", tcp50);

  // --- latency and throughput, batching off then on
  std::string tp_rows;
  for (bool batching : {false, true}) {
    auto rt = start_runtime(batching, batching ? "runtime-batching.log" : "runtime-nobatching.log");
    if (!rt.ok()) return Fail("start lowbit-runtime", rt.status());
    rpc::ClientConfig cfg = PlainLoopback(runtime_base, (*rt)->address());
    auto channel = ChannelFor(cfg);
    auto stub = v1::RuntimeService::NewStub(channel);
    auto info = LoadFromPath(*stub, cfg, "bench", "bench-w8a8");
    if (!info.ok()) return Fail("load", info.status());
    for (int i = 0; i < 20; ++i) (void)CallGemm(*stub, cfg, "bench", layer, x1, DType::kBF16);  // warm-up
    // Each Gemm call is paired with the floor, a unary call that does no work (GetServerInfo) on
    // the same channel, made right after it: the two percentiles see the same machine state.
    auto kserve = inference::GRPCInferenceService::NewStub(channel);
    std::vector<double> lat, kern, floor_us, kserve_lat, kserve_kern;
    for (int i = 0; i < settings->latency_calls; ++i) {
      const auto t0 = Clock::now();
      auto r = CallGemm(*stub, cfg, "bench", layer, x1, DType::kBF16);
      const double us = std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
      if (!r.ok()) return Fail("gemm", r.status());
      lat.push_back(us);
      kern.push_back(r->kernel_us);
      grpc::ClientContext ctx;
      Prepare(&ctx, cfg);
      v1::GetServerInfoResponse info_resp;
      const auto t1 = Clock::now();
      auto st = stub->GetServerInfo(&ctx, v1::GetServerInfoRequest(), &info_resp);
      floor_us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t1).count());
      if (!st.ok()) return Fail("GetServerInfo", st);
      const auto t2 = Clock::now();
      auto ki = CallModelInfer(*kserve, cfg, "bench", layer, x1);
      kserve_lat.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t2).count());
      if (!ki.ok()) return Fail("KServe ModelInfer", ki.status());
      kserve_kern.push_back(*ki);
    }
    const double p50 = Percentile(lat, 0.5), p99 = Percentile(lat, 0.99), k50 = Percentile(kern, 0.5);
    const double f50 = Percentile(floor_us, 0.5);
    absl::StrAppendFormat(&md,
                          "Gemm M=1, one client, batching %s: p50 %.0f us, p99 %.0f us, kernel p50 %.0f us, "
                          "RPC overhead (p50 − kernel p50) %.0f us; an empty unary call (GetServerInfo) p50 %.0f us, "
                          "so the runtime adds %.0f us to gRPC's own cost (%d calls each, interleaved)\n\n",
                          batching ? "on" : "off", p50, p99, k50, p50 - k50, f50, p50 - k50 - f50,
                          settings->latency_calls);
    std::fprintf(stderr,
                 "batching %s, M=1 latency: p50 %.0f us, p99 %.0f us, kernel p50 %.0f us, empty call %.0f us, "
                 "added by the runtime %.0f us\n",
                 batching ? "on" : "off", p50, p99, k50, f50, p50 - k50 - f50);
    const double kp50 = Percentile(kserve_lat, 0.5), kk50 = Percentile(kserve_kern, 0.5);
    absl::StrAppendFormat(&md,
                          "KServe v2 ModelInfer, same layer and x, batching %s: p50 %.0f us, p99 %.0f us, kernel p50 "
                          "%.0f us, so the runtime adds %.0f us to gRPC's own cost (%d calls, interleaved with the "
                          "above)\n\n",
                          batching ? "on" : "off", kp50, Percentile(kserve_lat, 0.99), kk50, kp50 - kk50 - f50,
                          settings->latency_calls);
    std::fprintf(stderr, "batching %s, KServe ModelInfer M=1: p50 %.0f us, kernel p50 %.0f us, added %.0f us\n",
                 batching ? "on" : "off", kp50, kk50, kp50 - kk50 - f50);
    for (const std::string& tl : tp_layers) {
      const std::string short_name = tl.substr(tl.rfind('.') + 1);
      for (const int clients : settings->clients) {
        Throughput t = MeasureThroughput(cfg, "bench", tl, x1, clients, settings->seconds);
        absl::StrAppendFormat(&tp_rows, "| %s | %s | %d | %.0f | %.1f | %d |\n", short_name, batching ? "on" : "off",
                              clients, t.rps, t.mean_batch, t.errors);
        std::fprintf(stderr, "%s, batching %s, %d clients: %.0f req/s (mean batch %.1f)\n", short_name.c_str(),
                     batching ? "on" : "off", clients, t.rps, t.mean_batch);
        if (!batching) {
          rps_off[{tl, clients}] = t.rps;
        } else if (rps_off[{tl, clients}] > 0) {
          absl::StrAppendFormat(&ratios, "%s, %d clients: batching lifts throughput %.2fx\n\n", short_name, clients,
                                t.rps / rps_off[{tl, clients}]);
        }
      }
    }
    if (batching) {
      // Streaming a checkpoint into the runtime.
      const auto t0 = Clock::now();
      auto streamed = StreamCheckpoint(*channel, cfg, ckpt.string(), "bench-streamed");
      const double s = std::chrono::duration<double>(Clock::now() - t0).count();
      if (!streamed.ok()) return Fail("LoadModelStream", streamed.status());
      const double mb = TreeBytes(ckpt.string()) / 1e6;
      absl::StrAppendFormat(
          &md, "LoadModelStream (runtime): %.1f MB in %.2f s = %.0f MB/s (includes weight preparation)\n\n", mb, s,
          mb / s);
    }
    stub.reset();  // close the connection: a graceful shutdown waits for connected clients
    channel.reset();
    (*rt)->Stop();
  }
  md +=
      "| layer | batching | clients | Gemm/s (M=1) | mean requests per GEMM | errors |\n"
      "|---|---|---:|---:|---:|---:|\n" +
      tp_rows + "\n" + ratios;

  // --- calibrator streaming: upload the float model, RTN job, fetch the result
  auto cal = ServiceProcess::Start(
      FindSiblingBinary("lowbit-calibrator", "calibrator"),
      {"serve", "--address=127.0.0.1:0", "--state_dir=" + (out / "state").string(),
       "--model_root=" + (out / "models").string(), "--output_root=" + (out / "checkpoints").string()},
      (out / "calibrator.log").string(), PlainServiceEnv("CALIBRATOR"));
  if (!cal.ok()) return Fail("start lowbit-calibrator", cal.status());
  rpc::ClientConfig ccfg = PlainLoopback(calibrator_base, (*cal)->address());
  auto cchannel = ChannelFor(ccfg);
  auto cstub = v1::CalibratorService::NewStub(cchannel);
  const double model_mb = TreeBytes(model_dir.string()) / 1e6;
  auto t0 = Clock::now();
  auto up = UploadModelDir(*cchannel, ccfg, model_dir.string(), "bench-upload");
  double s = std::chrono::duration<double>(Clock::now() - t0).count();
  if (!up.ok()) return Fail("UploadModel", up.status());
  absl::StrAppendFormat(
      &md, "UploadModel (calibrator): %.1f MB in %.2f s = %.0f MB/s (CRC-32C checked, written, fsynced)\n\n", model_mb,
      s, model_mb / s);
  v1::CreateJobRequest req;
  req.mutable_spec()->set_model("bench");
  req.mutable_spec()->set_scheme("W8A8");
  req.mutable_spec()->set_algorithm("rtn");
  req.mutable_spec()->set_heldout_fraction(0);
  auto* toks = req.mutable_spec()->mutable_inline_tokens();
  for (int i = 0; i < 4; ++i) {
    auto* seq = toks->add_sequences();
    for (int j = 0; j < 16; ++j) seq->add_ids((i * 31 + j * 7) % 512);
  }
  grpc::ClientContext ctx;
  Prepare(&ctx, ccfg);
  v1::CreateJobResponse created;
  if (auto st = cstub->CreateJob(&ctx, req, &created); !st.ok()) return Fail("CreateJob", st);
  auto job = WaitForJob(*cstub, ccfg, created.job().id(), /*bar=*/false);
  if (!job.ok()) return Fail("WatchJob", job.status());
  if (job->state() != v1::JOB_STATE_SUCCEEDED) {
    std::fprintf(stderr, "lowbit bench-rpc: job failed: %s\n", job->error_message().c_str());
    return 1;
  }
  for (int64_t chunk : {int64_t{1} << 20, int64_t{4} << 20}) {
    rpc::ClientConfig chunked = ccfg;
    chunked.chunk_bytes = chunk;
    t0 = Clock::now();
    auto mem = FetchResult(*cchannel, chunked, job->id());
    s = std::chrono::duration<double>(Clock::now() - t0).count();
    if (!mem.ok()) return Fail("FetchResult", mem.status());
    absl::StrAppendFormat(
        &md, "FetchResult into memory, %d MiB chunks: %.1f MB in %.2f s = %.0f MB/s (reassembled, CRC-32C checked)\n\n",
        chunk >> 20, mem->tensor_bytes / 1e6, s, mem->tensor_bytes / 1e6 / s);
  }
  t0 = Clock::now();
  auto fetched = FetchResultToDir(*cchannel, ccfg, job->id(), (out / "fetched").string());
  s = std::chrono::duration<double>(Clock::now() - t0).count();
  if (!fetched.ok()) return Fail("FetchResult", fetched.status());
  absl::StrAppendFormat(&md,
                        "FetchResult to files (lowbit fetch): %.1f MB of tensors in %.2f s = %.0f MB/s (reassembled, "
                        "CRC-32C checked, written)\n",
                        *fetched / 1e6, s, *fetched / 1e6 / s);
  cstub.reset();
  cchannel.reset();
  (*cal)->Stop();

  std::printf("%s", md.c_str());
  if (auto st = AtomicWriteFile((out / "bench-rpc.md").string(), md); !st.ok()) return Fail("write", st);
  return 0;
}

}  // namespace

int RunBenchRpc(const Args& args) { return Bench(args); }

}  // namespace lowbit::cli
