// The runtime engine, independent of any wire format: a backend (cuda when a GPU is present,
// else cpu), the model registry, and the batcher. Gemm() validates a request (model, layer,
// dtypes, shape), quantizes the activations as vLLM does for the layer's scheme, runs the
// backend GEMM (batched with concurrent requests for the same layer) and returns Y [M, N].
// The lowbit.v1 gRPC service is one front end on it; a KServe v2 front end can be another.
#ifndef LOWBIT_RUNTIME_ENGINE_H_
#define LOWBIT_RUNTIME_ENGINE_H_

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/tensor.h"
#include "kernels/backend.h"
#include "prometheus/registry.h"
#include "runtime/batcher.h"
#include "runtime/load_journal.h"
#include "runtime/streamed_copy.h"
#include "runtime/metrics.h"
#include "runtime/model_registry.h"

namespace lowbit::runtime {

inline constexpr char kRuntimeVersion[] = "0.1.0";

struct EngineOptions {
  std::string backend = "auto";  // auto | cpu | cpu-generic | cpu-ref | cuda | cuda-simple
  int threads = 0;               // CPU backend worker threads (0 = all cores)
  RegistryOptions registry;
  BatcherOptions batching;
  int64_t max_rows = 16384;      // M limit of one request
  // Where the models clients load (from a path, or streamed: a copy of their checkpoint) are
  // recorded, so that RestoreLoads() brings them back after a restart ("" = not recorded: a
  // restarted runtime has only its --load models).
  std::string state_dir;
};

struct GemmRequest {
  std::string model, layer;
  Tensor x;                         // [M, K] F32 / F16 / BF16
  std::optional<DType> out_dtype;   // F32 / F16 / BF16; nullopt = x's dtype
  // The largest result the caller can send back (its message limit less its own fields); a
  // request whose [M, N] result is larger is RESOURCE_EXHAUSTED before anything runs. 0 = none.
  int64_t max_result_bytes = 0;
};

struct EngineInfo {
  std::string version, backend, device, compute_capability, requirements;
  std::vector<std::string> schemes;
  int64_t memory_budget_bytes = 0, memory_used_bytes = 0;
  BatcherOptions batching;
};

class Engine {
 public:
  // Errors: an unknown or unavailable backend, a bad model root, bad options, a state
  // directory another runtime holds or whose record cannot be read (LoadJournal::Open).
  static absl::StatusOr<std::unique_ptr<Engine>> Create(const EngineOptions& options,
                                                        std::shared_ptr<prometheus::Registry> metrics = nullptr);

  // NOT_FOUND: unknown model or layer. INVALID_ARGUMENT: dtype, rank, M (1..max_rows), K, out
  // dtype. RESOURCE_EXHAUSTED: a result over max_result_bytes. CANCELLED / DEADLINE_EXCEEDED: the
  // call ended while the request waited.
  absl::StatusOr<GemmResult> Gemm(const GemmRequest& request, const CallControl& control = {});

  // The loads stop (nothing published, the budget given back) with DEADLINE_EXCEEDED / CANCELLED
  // once `control` says the call ended: ModelRegistry::LoadFromPath. With a state directory, a
  // path load is recorded there (`remember`; false for --load, which the flags give again at
  // every start); a load that cannot be recorded is unloaded again and fails.
  absl::StatusOr<std::shared_ptr<const LoadedModel>> LoadFromPath(const std::string& name, const std::string& path,
                                                                  const CallControl& control = {},
                                                                  bool remember = true);
  absl::StatusOr<std::shared_ptr<const LoadedModel>> LoadFromTensors(const std::string& name,
                                                                     const std::string& config_json,
                                                                     std::map<std::string, Tensor> tensors,
                                                                     const CallControl& control = {});
  // Finishes a streamed load begun on registry() (and updates the model metrics).
  absl::StatusOr<std::shared_ptr<const LoadedModel>> FinishStreamedLoad(ModelRegistry::StreamedLoad& load,
                                                                        const CallControl& control = {});
  // With a state directory: a copy for a streamed load to write its tensors into as they arrive
  // (StreamedCopy::Begin), to be recorded by RememberStreamed once the load succeeded; null
  // without one.
  absl::StatusOr<std::unique_ptr<StreamedCopy>> BeginStreamedCopy(
      const std::string& config_json, const std::vector<SafetensorsModelWriter::Placement>& placements);
  // Commits `copy` and records it as model `name` (published as `model`); when that fails the
  // model is unloaded again and the error returned (a load that would not survive a restart is
  // not left half remembered).
  absl::Status RememberStreamed(const std::string& name, const std::shared_ptr<const LoadedModel>& model,
                                StreamedCopy& copy);
  // Unpublishes the model and removes it (and its streamed copy) from the state directory.
  absl::Status Unload(const std::string& name);
  // Loads the models the state directory records (none without one), before the runtime serves:
  // path loads from their path, streamed ones from their copy.
  // A name already loaded (by --load) is left as it is. A model that no longer loads (its
  // checkpoint gone, over a smaller budget) is logged and dropped from the record; the others
  // still load. Returns how many were loaded.
  int RestoreLoads();
  ModelRegistry& registry() { return *registry_; }
  EngineInfo Info() const;
  const EngineOptions& options() const { return options_; }

 private:
  Engine() = default;
  // Gemm once the layer is found: the checks that need it, then the batcher.
  absl::StatusOr<GemmResult> GemmOnLayer(const GemmRequest& request, const std::shared_ptr<const LoadedModel>& model,
                                         const PreparedLinear& layer, const CallControl& control);
  absl::Status RunBatch(const PreparedLinear& layer, DType x_dtype, DType out_dtype,
                        const std::vector<const Tensor*>& xs, std::vector<Tensor>* ys, ExecutionTiming* timing);
  void UpdateModelMetrics();
  // Records model `name` (published as `model`) in the state directory as `entry`, after
  // committing `copy` (a streamed load's); unloads it again when that fails. Nothing when an
  // unload already undid the load.
  absl::Status Remember(const std::string& name, const std::shared_ptr<const LoadedModel>& model,
                        const LoadJournal::Entry& entry, StreamedCopy* copy);

  EngineOptions options_;
  std::shared_ptr<BackendHandle> handle_;
  std::unique_ptr<ModelRegistry> registry_;
  std::unique_ptr<RuntimeMetrics> metrics_;
  std::unique_ptr<Batcher> batcher_;
  std::unique_ptr<LoadJournal> journal_;  // null without a state directory
  // Held while a load is recorded and while a model is unloaded and forgotten, so the record
  // ends as the registry does when an unload races the load it undoes.
  std::mutex journal_mu_;
  std::string device_, compute_capability_;
};

// "cpu model name" or the GPU's name, and its compute capability ("9.0"; empty on the CPU).
void DescribeDevice(const std::string& backend_name, std::string* device, std::string* compute_capability);

}  // namespace lowbit::runtime

#endif  // LOWBIT_RUNTIME_ENGINE_H_
