// Per-layer inference statistics: what each quantized Linear of a loaded model ran, cumulative
// since the model was loaded (they live with the layer, so an unload drops them). The KServe
// front end reports them as Triton's ModelStatistics (docs/runtime.md, its ModelStatistics row); they count
// every request for the layer, lowbit.v1 Gemm and KServe ModelInfer alike. No gRPC here.
#ifndef LOWBIT_RUNTIME_LAYER_STATS_H_
#define LOWBIT_RUNTIME_LAYER_STATS_H_

#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>

namespace lowbit::runtime {

// Nanoseconds from `from` to `to`, and from `since` to now (steady clock).
inline uint64_t NsBetween(std::chrono::steady_clock::time_point from, std::chrono::steady_clock::time_point to) {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(to - from).count());
}
inline uint64_t ElapsedNs(std::chrono::steady_clock::time_point since) {
  return NsBetween(since, std::chrono::steady_clock::now());
}

// A count of events and their summed duration.
struct DurationStat {
  uint64_t count = 0;
  uint64_t ns = 0;
  void Add(uint64_t duration_ns) {
    ++count;
    ns += duration_ns;
  }
};

// The phases of one GEMM (one batch), in ns: input = the activations' host conversion and copy
// to the device; infer = activation quantization, the GEMM and its synchronization; output = the
// result rows copied back and split per request.
struct ExecutionTiming {
  uint64_t input_ns = 0, infer_ns = 0, output_ns = 0;
};

struct LayerStatsSnapshot {
  uint64_t last_inference_ms = 0;  // when the last request ended, ms since the Unix epoch; 0 = none yet
  uint64_t inference_count = 0;    // rows of the successful requests (Triton counts batch elements)
  uint64_t execution_count = 0;    // GEMMs run
  // Per request: success / fail = its time in the engine (validation, queue, GEMM, split);
  // queue = its wait for a batch or the execution slot; compute_* = the phases of the GEMM that
  // computed it (a batched GEMM is counted once per request in it), successful requests only.
  DurationStat success, fail, queue, compute_input, compute_infer, compute_output;
  struct Batch {
    DurationStat input, infer, output;  // count = GEMMs of this many rows
  };
  std::map<uint64_t, Batch> batches;  // by a GEMM's rows
};

class LayerStats {
 public:
  void Succeeded(int64_t rows, uint64_t total_ns, uint64_t queue_ns, const ExecutionTiming& gemm);
  void Failed(uint64_t total_ns);
  void Executed(int64_t rows, const ExecutionTiming& timing);
  LayerStatsSnapshot Snapshot() const;

 private:
  void Touch();  // under mu_: last_inference_ms = now

  mutable std::mutex mu_;
  LayerStatsSnapshot s_;
};

}  // namespace lowbit::runtime

#endif  // LOWBIT_RUNTIME_LAYER_STATS_H_
