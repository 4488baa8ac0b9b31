// The runtime's weight registry: loads compressed-tensors checkpoints (a directory under the
// model root, or tensors streamed by a client), prepares every quantized Linear on the backend
// once (Backend::Prepare*: validated and repacked into the kernel layout), and keeps them by
// model and layer name. Enforces the model-root confinement (no absolute paths, no "..", no
// symlink leading outside), unique model names, and a memory budget.
// Thread-safe; loaded models are immutable and shared, so an unload never pulls a weight from
// under a GEMM that is running, and the budget counts a model until its last reference goes
// (an unloaded model a running GEMM still holds keeps its bytes counted until that GEMM ends).
#ifndef LOWBIT_RUNTIME_MODEL_REGISTRY_H_
#define LOWBIT_RUNTIME_MODEL_REGISTRY_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "common/tensor.h"
#include "kernels/backend.h"
#include "runtime/call_control.h"
#include "runtime/layer_stats.h"
#include "runtime/linear_spec.h"

namespace lowbit::runtime {

// The backend and the lock that serialises its ops (one stream / one thread pool).
struct BackendHandle {
  std::unique_ptr<kernels::Backend> backend;
  std::mutex mu;
};

// One quantized Linear, prepared for the backend.
struct PreparedLinear {
  std::string module, scheme, activations;
  LinearKind kind = LinearKind::kW8A8Dynamic;
  int64_t n = 0, k = 0, group_size = 0;
  bool asymmetric = false, act_order = false, has_bias = false;
  std::optional<float> input_scale;
  DType w4_compute_dtype = DType::kBF16;  // W4A16: dtype F32 activations are converted to
  int64_t bytes = 0;                      // in the backend (weight layout + bias): counted against the budget
  std::unique_ptr<kernels::PreparedWeight> weight;
  float* bias = nullptr;  // backend memory, [N] f32, or null
  std::shared_ptr<BackendHandle> handle;
  mutable LayerStats stats;  // what ran on it since the load (the engine records, KServe reports)
  ~PreparedLinear();
};

// The memory budget's count of the published models that are still alive: those loaded, and
// those unloaded that something (a running GEMM) still references. Shared by the registry and
// every model it published, so that the last reference to a model gives its bytes back.
struct BudgetLedger {
  std::mutex mu;
  int64_t bytes = 0;  // weight bytes of every live published model
  int64_t models = 0;
  std::function<void()> on_release;  // called (outside mu) after a model's bytes were given back
};

struct LoadedModel {
  std::string name, source;
  std::map<std::string, std::shared_ptr<const PreparedLinear>> layers;
  std::set<std::string> float_layers;  // Linears the checkpoint leaves in float
  int64_t bytes = 0;
  // Set when the registry publishes the model: the destructor frees the layers (those nothing
  // else holds), then takes `bytes` off the ledger.
  std::shared_ptr<BudgetLedger> ledger;
  LoadedModel() = default;
  LoadedModel(const LoadedModel&) = delete;
  LoadedModel& operator=(const LoadedModel&) = delete;
  ~LoadedModel();
};

struct RegistryOptions {
  std::string model_root;           // LoadFromPath paths resolve under it; empty = path loads refused
  int64_t memory_budget_bytes = 0;  // 0 = unlimited
  // Tests only: sleep this long before preparing each Linear (LOWBIT_RUNTIME_TEST_LAYER_PAUSE_MS
  // in lowbit-runtime), so that a load lasts long enough to be cancelled half way.
  int64_t test_layer_pause_ms = 0;
};

class ModelRegistry {
 public:
  // Errors: a model root that does not exist or is not a directory.
  static absl::StatusOr<std::unique_ptr<ModelRegistry>> Create(std::shared_ptr<BackendHandle> handle,
                                                               RegistryOptions options);

  // `path` is relative to the model root. INVALID_ARGUMENT: empty / absolute / ".." / bad name;
  // PERMISSION_DENIED: resolves outside the root (symlink); NOT_FOUND: no such directory;
  // ALREADY_EXISTS: name in use; RESOURCE_EXHAUSTED: over the budget; UNIMPLEMENTED: a scheme
  // the runtime does not execute (naming the layer). `control` is asked between layers and once
  // more just before the model is published: when the call's deadline passed or it was
  // cancelled, what was prepared is freed, the name and the reservation are given back, nothing
  // is published, and the result is DEADLINE_EXCEEDED / CANCELLED.
  absl::StatusOr<std::shared_ptr<const LoadedModel>> LoadFromPath(const std::string& name, const std::string& path,
                                                                  const CallControl& control = {});
  // A checkpoint directory the runtime wrote itself (a streamed load's copy in the state
  // directory, StreamedCopy): not confined to the model root; the model's source is "stream".
  absl::StatusOr<std::shared_ptr<const LoadedModel>> LoadFromCopy(const std::string& name, const std::string& dir,
                                                                  const CallControl& control = {});
  // A checkpoint given as config.json text plus its tensors (from LoadModelStream).
  absl::StatusOr<std::shared_ptr<const LoadedModel>> LoadFromTensors(const std::string& name,
                                                                     const std::string& config_json,
                                                                     std::map<std::string, Tensor> tensors,
                                                                     const CallControl& control = {});
  // A streamed load whose manifest names every tensor up front: each quantized Linear is
  // prepared as soon as its last tensor arrives, and its host tensors are dropped then (tensors
  // no Linear needs are dropped at once), so the load holds about one layer in host memory.
  // Errors of Begin are LoadFromPath's that need names only (config, groups); Add and Finish
  // return the rest. Destroyed unfinished, it frees what it prepared and its reservations.
  class StreamedLoad {
   public:
    ~StreamedLoad();
    // `name` must be in the manifest; each tensor once.
    absl::Status Add(const std::string& name, Tensor tensor);
    // Whether a quantized Linear reads tensor `name` (Add drops the others: a stream need not
    // hold them in memory at all).
    bool Reads(const std::string& name) const { return module_of_.count(name) > 0; }
    // After the last tensor: INVALID_ARGUMENT when a quantized Linear's tensors did not all arrive;
    // DEADLINE_EXCEEDED / CANCELLED (nothing published) when `control` says the call ended.
    absl::StatusOr<std::shared_ptr<const LoadedModel>> Finish(const CallControl& control = {});

   private:
    friend class ModelRegistry;
    StreamedLoad() = default;
    ModelRegistry* registry_ = nullptr;
    std::string name_;
    LinearPlan plan_;
    DType model_dtype_ = DType::kBF16;
    std::map<std::string, size_t> module_of_;  // tensor -> index into plan_.linears
    std::vector<std::map<std::string, Tensor>> pending_;  // per planned Linear: tensors so far
    std::vector<size_t> missing_;                          // per planned Linear: tensors still to come
    std::shared_ptr<LoadedModel> model_;
    int64_t reserved_ = 0;
    bool active_ = false;  // holds the name and the reservation
  };
  // `manifest`: every tensor's name and byte count, as the stream announced them. The budget is
  // asked up front for the bytes of the quantized Linears' tensors, as a path load's estimate is
  // (RESOURCE_EXHAUSTED before any data), not for tensors no quantized Linear reads (embeddings,
  // norms), which are dropped as they arrive.
  absl::StatusOr<std::unique_ptr<StreamedLoad>> BeginStreamedLoad(
      const std::string& name, const std::string& config_json,
      const std::vector<std::pair<std::string, int64_t>>& manifest);

  ~ModelRegistry();

  // Unpublishes the model. Its bytes stay counted (used_bytes) until the last reference to it
  // (a GEMM running on it) goes.
  absl::Status Unload(const std::string& name);
  absl::StatusOr<std::shared_ptr<const LoadedModel>> Get(const std::string& name) const;
  std::vector<std::shared_ptr<const LoadedModel>> List() const;

  // Checks a name before a (streamed) load starts: valid and not in use.
  absl::Status CheckName(const std::string& name) const;
  // The confined, canonical directory for `path`, or the error LoadFromPath would return.
  absl::StatusOr<std::string> ResolvePath(const std::string& path) const;
  // The checkpoints directly under the model root: the names of its subdirectories that
  // ResolvePath accepts and that hold a config.json, sorted (none without a root).
  std::vector<std::string> Checkpoints() const;

  int64_t budget_bytes() const { return options_.memory_budget_bytes; }
  // Bytes of every published model still alive: the loaded ones, and unloaded ones that a
  // running GEMM still holds.
  int64_t used_bytes() const;
  // Called after an unloaded model's last reference went and its bytes were given back (the
  // engine refreshes its memory gauge). Set it before loading anything.
  void SetReleaseCallback(std::function<void()> callback);
  // Bytes a new load may still use (budget minus used and reserved); INT64_MAX when unlimited.
  int64_t bytes_left() const;
  size_t model_count() const;
  const std::string& model_root() const { return root_; }
  kernels::Backend& backend() { return *handle_->backend; }

 private:
  ModelRegistry(std::shared_ptr<BackendHandle> handle, RegistryOptions options, std::string root)
      : handle_(std::move(handle)), options_(std::move(options)), root_(std::move(root)) {}
  // A checkpoint directory `dir` (`shown` in messages), loaded as model `name` from `source_label`.
  absl::StatusOr<std::shared_ptr<const LoadedModel>> LoadFromDirectory(const std::string& name, const std::string& dir,
                                                                       const std::string& shown,
                                                                       const std::string& source_label,
                                                                       const CallControl& control);
  absl::StatusOr<std::shared_ptr<const LoadedModel>> Load(const std::string& name, const std::string& source,
                                                          const nlohmann::json& config, const TensorSource& tensors,
                                                          const CallControl& control);
  absl::StatusOr<std::shared_ptr<PreparedLinear>> Prepare(const LinearSpec& spec, DType model_dtype);
  // The steps every load takes: reserve the name and `bytes` of the budget; prepare one Linear
  // into `model`, growing the reservation to what the backend holds; give the reservation back
  // (a failed load) or turn it into the model's use.
  absl::Status ReserveLoad(const std::string& name, int64_t bytes);
  absl::Status AddPrepared(const std::string& name, const LinearSpec& spec, DType model_dtype, LoadedModel& model,
                           int64_t* reserved);
  void ReleaseLoad(const std::string& name, int64_t reserved);
  // Publishes the model unless `control` says the call ended (then the same as ReleaseLoad, and
  // the model is freed before its reservation is given back).
  absl::StatusOr<std::shared_ptr<const LoadedModel>> CommitLoad(std::shared_ptr<LoadedModel> model, int64_t reserved,
                                                                const CallControl& control);
  // AlreadyExists when `name` is loaded or being loaded.
  absl::Status NameFreeLocked(const std::string& name) const;
  int64_t BytesLeftLocked() const;
  // "(X used by N loaded models, Y reserved by M loads in progress[, Z held by K unloaded models
  // that running GEMMs still use])", for the budget's refusals; `own_reserved` (a load's own
  // reservation, when it is already counted) is left out.
  std::string BudgetUseLocked(int64_t own_reserved = -1) const;
  // Raises a load's reservation from `reserved` to `need` bytes, or RESOURCE_EXHAUSTED when the
  // budget has not that much left.
  absl::Status GrowReservation(const std::string& name, int64_t reserved, int64_t need);

  std::shared_ptr<BackendHandle> handle_;
  RegistryOptions options_;
  std::string root_;  // canonical model root ("" = none)
  mutable std::mutex mu_;
  std::map<std::string, std::shared_ptr<const LoadedModel>> models_;
  std::set<std::string> loading_;  // names reserved by loads in progress
  int64_t reserved_ = 0;
  // Lock order: mu_, then ledger_->mu. A model is never destroyed under mu_.
  std::shared_ptr<BudgetLedger> ledger_ = std::make_shared<BudgetLedger>();
};

}  // namespace lowbit::runtime

#endif  // LOWBIT_RUNTIME_MODEL_REGISTRY_H_
