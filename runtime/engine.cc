#include "runtime/engine.h"

#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kernels/absl_status.h"
#include "spdlog/spdlog.h"

#ifdef LOWBIT_KERNELS_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace lowbit::runtime {
namespace {

std::string DN(DType d) { return std::string(DTypeName(d)); }

bool IsActivationDType(DType d) { return d == DType::kF32 || d == DType::kF16 || d == DType::kBF16; }

// Backend allocations freed when the batch ends.
class Scratch {
 public:
  explicit Scratch(kernels::Backend& be) : be_(be) {}
  ~Scratch() {
    for (void* p : ptrs_) be_.Free(p);
  }
  absl::StatusOr<void*> Alloc(size_t bytes) {
    void* p = nullptr;
    kernels::Status s = be_.Alloc(std::max<size_t>(bytes, 1), &p);
    if (!s.ok()) return absl::ResourceExhaustedError(absl::StrCat("backend memory: ", s.message()));
    ptrs_.push_back(p);
    return p;
  }

 private:
  kernels::Backend& be_;
  std::vector<void*> ptrs_;
};

absl::Status Kernel(const kernels::Status& s, const PreparedLinear& layer) {
  if (s.ok()) return absl::OkStatus();
  absl::Status a = kernels::ToAbslStatus(s);
  return absl::Status(a.code(), absl::StrCat("layer ", layer.module, ": ", a.message()));
}

// Rows of `x` (F32/F16/BF16) converted to `to`.
Tensor Convert(const Tensor& x, DType to) {
  if (x.dtype() == to) return x;
  std::vector<float> f = x.ToFloats();
  return Tensor::FromFloats(f, x.shape(), to);
}

// W8A8 static activations, quantized on the host once per request (vLLM static_scaled_int8_quant:
// q = clamp(round_half_even(x / s), -128, 127)). A NaN or an infinity is refused: one scale for
// the tensor leaves no row scale to carry it (the dynamic schemes turn such a row into NaN
// outputs), and clamping it would be a finite wrong answer.
absl::StatusOr<Tensor> QuantizeStaticInt8(const Tensor& x, float s, const std::string& layer_name,
                                          const std::string& scheme) {
  const std::vector<float> f = x.ToFloats();
  const int64_t k = x.dim(1);
  Tensor q = Tensor::Zeros(DType::kI8, x.shape());
  int8_t* qd = q.mutable_data<int8_t>();
  for (size_t i = 0; i < f.size(); ++i) {
    if (!std::isfinite(f[i])) {
      return absl::InvalidArgumentError(absl::StrCat("x[", i / k, ", ", i % k, "] is ", f[i], "; layer '", layer_name,
                                                     "' is ", scheme,
                                                     " (static per-tensor int8), which cannot represent it"));
    }
    qd[i] = static_cast<int8_t>(std::min(127.0f, std::max(-128.0f, std::nearbyint(f[i] / s))));
  }
  return q;
}

std::string CpuModelName() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      size_t colon = line.find(':');
      if (colon != std::string::npos) return line.substr(line.find_first_not_of(" \t", colon + 1));
    }
  }
  return "cpu";
}

}  // namespace

void DescribeDevice(const std::string& backend_name, std::string* device, std::string* compute_capability) {
  compute_capability->clear();
#ifdef LOWBIT_KERNELS_HAVE_CUDA
  if (backend_name.rfind("cuda", 0) == 0) {
    int dev = 0;
    cudaDeviceProp prop;
    if (cudaGetDevice(&dev) == cudaSuccess && cudaGetDeviceProperties(&prop, dev) == cudaSuccess) {
      *device = prop.name;
      *compute_capability = absl::StrCat(prop.major, ".", prop.minor);
      return;
    }
  }
#endif
  *device = CpuModelName();
}

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(const EngineOptions& options,
                                                       std::shared_ptr<prometheus::Registry> metrics) {
  if (options.max_rows < 1) return absl::InvalidArgumentError("max_rows must be ≥ 1");
  if (options.batching.max_batch_rows < 1) return absl::InvalidArgumentError("max_batch_rows must be ≥ 1");
  if (options.batching.max_queue_delay_us < 0) return absl::InvalidArgumentError("max_queue_delay_us must be ≥ 0");
  std::unique_ptr<Engine> e(new Engine());
  e->options_ = options;
  e->handle_ = std::make_shared<BackendHandle>();
  kernels::BackendOptions bo;
  bo.threads = options.threads;
  if (kernels::Status s = kernels::MakeBackend(options.backend, bo, &e->handle_->backend); !s.ok()) {
    return kernels::ToAbslStatus(s);
  }
  absl::StatusOr<std::unique_ptr<ModelRegistry>> reg = ModelRegistry::Create(e->handle_, options.registry);
  if (!reg.ok()) return reg.status();
  e->registry_ = *std::move(reg);
  if (metrics) e->metrics_ = std::make_unique<RuntimeMetrics>(*metrics);
  Engine* self = e.get();
  // An unloaded model that a running GEMM held gives its bytes back when that GEMM ends: the
  // memory gauge follows then. (The registry drops the callback before its models go.)
  e->registry_->SetReleaseCallback([self] { self->UpdateModelMetrics(); });
  e->batcher_ = std::make_unique<Batcher>(
      options.batching,
      [self](const PreparedLinear& layer, DType xd, DType yd, const std::vector<const Tensor*>& xs,
             std::vector<Tensor>* ys, ExecutionTiming* t) { return self->RunBatch(layer, xd, yd, xs, ys, t); },
      e->metrics_.get());
  if (!options.state_dir.empty()) {
    absl::StatusOr<std::unique_ptr<LoadJournal>> journal = LoadJournal::Open(options.state_dir);
    if (!journal.ok()) return journal.status();
    e->journal_ = *std::move(journal);
  }
  DescribeDevice(e->handle_->backend->name(), &e->device_, &e->compute_capability_);
  e->UpdateModelMetrics();
  spdlog::info("runtime engine: backend {} on {}", e->handle_->backend->name(), e->device_);
  return e;
}

void Engine::UpdateModelMetrics() {
  if (metrics_) metrics_->Models(registry_->model_count(), registry_->used_bytes(), registry_->budget_bytes());
}

absl::StatusOr<std::shared_ptr<const LoadedModel>> Engine::LoadFromPath(const std::string& name,
                                                                        const std::string& path,
                                                                        const CallControl& control, bool remember) {
  auto r = registry_->LoadFromPath(name, path, control);
  if (r.ok() && remember && journal_ != nullptr) {
    if (absl::Status s = Remember(name, *r, {.path = path, .streamed = {}}, nullptr); !s.ok()) r = s;
  }
  UpdateModelMetrics();
  return r;
}

absl::Status Engine::Remember(const std::string& name, const std::shared_ptr<const LoadedModel>& model,
                              const LoadJournal::Entry& entry, StreamedCopy* copy) {
  // The copy's bytes are fsynced before the lock: a multi-GB fsync must not hold up other loads'
  // records and unloads. Publishing it (a rename) and recording it stay under the lock, which
  // closes the race with an unload of the same name.
  absl::Status s = copy != nullptr ? copy->Sync() : absl::OkStatus();
  std::lock_guard<std::mutex> lock(journal_mu_);
  absl::StatusOr<std::shared_ptr<const LoadedModel>> now = registry_->Get(name);
  if (!now.ok() || *now != model) return absl::OkStatus();  // an unload already undid this load
  if (s.ok() && copy != nullptr) s = copy->Commit();
  if (s.ok()) s = journal_->Record(name, entry);
  if (s.ok()) return s;
  registry_->Unload(name).IgnoreError();
  return absl::Status(s.code(), absl::StrCat("model '", name, "' was not loaded: the state directory could not ",
                                             "record it (", s.message(), ")"));
}

absl::StatusOr<std::unique_ptr<StreamedCopy>> Engine::BeginStreamedCopy(
    const std::string& config_json, const std::vector<SafetensorsModelWriter::Placement>& placements) {
  if (journal_ == nullptr) return std::unique_ptr<StreamedCopy>();
  return StreamedCopy::Begin(journal_->dir(), journal_->NewStreamedCopyName(), config_json, placements);
}

absl::Status Engine::RememberStreamed(const std::string& name, const std::shared_ptr<const LoadedModel>& model,
                                      StreamedCopy& copy) {
  if (journal_ == nullptr) return absl::OkStatus();
  absl::Status s = Remember(name, model, {.path = {}, .streamed = copy.relative_name()}, &copy);
  UpdateModelMetrics();
  return s;
}

absl::StatusOr<std::shared_ptr<const LoadedModel>> Engine::LoadFromTensors(const std::string& name,
                                                                           const std::string& config_json,
                                                                           std::map<std::string, Tensor> tensors,
                                                                           const CallControl& control) {
  auto r = registry_->LoadFromTensors(name, config_json, std::move(tensors), control);
  UpdateModelMetrics();
  return r;
}

absl::StatusOr<std::shared_ptr<const LoadedModel>> Engine::FinishStreamedLoad(ModelRegistry::StreamedLoad& load,
                                                                              const CallControl& control) {
  auto r = load.Finish(control);
  UpdateModelMetrics();
  return r;
}

absl::Status Engine::Unload(const std::string& name) {
  absl::Status s;
  {
    std::lock_guard<std::mutex> lock(journal_mu_);
    s = registry_->Unload(name);
    if (s.ok() && journal_ != nullptr) {
      if (absl::Status f = journal_->Forget(name); !f.ok()) {
        spdlog::error("model '{}' unloaded, but {}: a restart would load it again", name, std::string(f.message()));
      }
    }
  }
  UpdateModelMetrics();
  return s;
}

int Engine::RestoreLoads() {
  if (journal_ == nullptr) return 0;
  int loaded = 0;
  for (const auto& [name, entry] : journal_->Models()) {
    const std::string& path = entry.streamed.empty() ? entry.path : entry.streamed;
    if (registry_->Get(name).ok()) {
      spdlog::info("state: model '{}' is recorded as '{}' but --load already gave that name; keeping --load's", name,
                   path);
      continue;
    }
    absl::StatusOr<std::shared_ptr<const LoadedModel>> m =
        entry.streamed.empty() ? LoadFromPath(name, entry.path, {}, /*remember=*/false)
                               : registry_->LoadFromCopy(name, journal_->dir() + "/" + entry.streamed);
    if (m.ok()) {
      ++loaded;
      spdlog::info("state: model '{}' loaded again from '{}' ({} quantized layers)", name, path, (*m)->layers.size());
      continue;
    }
    spdlog::warn("state: model '{}' ('{}') does not load any more: {}; dropped from {}", name, path,
                 m.status().ToString(), journal_->file());
    if (absl::Status f = journal_->Forget(name); !f.ok()) spdlog::error("{}", std::string(f.message()));
  }
  UpdateModelMetrics();
  return loaded;
}

EngineInfo Engine::Info() const {
  EngineInfo info;
  info.version = kRuntimeVersion;
  info.backend = handle_->backend->name();
  info.device = device_;
  info.compute_capability = compute_capability_;
  info.requirements = handle_->backend->Requirements();
  info.schemes = {"W8A8", "W8A8_STATIC", "W4A16", "W4A16_ASYM", "FP8", "FP8_DYNAMIC"};
  info.memory_budget_bytes = registry_->budget_bytes();
  info.memory_used_bytes = registry_->used_bytes();
  info.batching = batcher_->options();
  return info;
}

absl::StatusOr<GemmResult> Engine::Gemm(const GemmRequest& req, const CallControl& control) {
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<std::shared_ptr<const LoadedModel>> model = registry_->Get(req.model);
  if (!model.ok()) return model.status();
  auto it = (*model)->layers.find(req.layer);
  if (it == (*model)->layers.end()) {
    if ((*model)->float_layers.count(req.layer)) {
      return absl::NotFoundError(absl::StrCat("layer '", req.layer, "' of model '", req.model,
                                              "' is not quantized (left in float by the checkpoint); the runtime "
                                              "executes quantized Linears only"));
    }
    return absl::NotFoundError(absl::StrCat("model '", req.model, "' has no quantized layer '", req.layer, "' (it has ",
                                            (*model)->layers.size(), ", e.g. '", (*model)->layers.begin()->first,
                                            "'; see ListModels)"));
  }
  // Every request that reaches a layer is counted in its statistics, the refused ones as failures.
  const PreparedLinear& layer = *it->second;
  absl::StatusOr<GemmResult> r = GemmOnLayer(req, *model, layer, control);
  if (r.ok()) {
    layer.stats.Succeeded(r->y.dim(0), ElapsedNs(start), r->queue_ns, r->timing);
  } else {
    layer.stats.Failed(ElapsedNs(start));
  }
  return r;
}

absl::StatusOr<GemmResult> Engine::GemmOnLayer(const GemmRequest& req, const std::shared_ptr<const LoadedModel>& model,
                                               const PreparedLinear& layer, const CallControl& control) {
  const Tensor& x = req.x;
  if (!IsActivationDType(x.dtype())) {
    return absl::InvalidArgumentError(
        absl::StrCat("x has dtype ", DN(x.dtype()), "; Gemm takes F32, F16 or BF16 activations"));
  }
  if (x.shape().size() != 2) {
    return absl::InvalidArgumentError(absl::StrCat("x has shape ", ShapeString(x.shape()), "; Gemm takes [M, K]"));
  }
  const int64_t m = x.dim(0), k = x.dim(1);
  if (m < 1) return absl::InvalidArgumentError(absl::StrCat("x has M = ", m, " rows; at least 1 is needed"));
  if (m > options_.max_rows) {
    return absl::InvalidArgumentError(
        absl::StrCat("x has M = ", m, " rows; the limit is ", options_.max_rows, " per request (split it)"));
  }
  if (k != layer.k) {
    return absl::InvalidArgumentError(absl::StrCat("x has K = ", k, " columns but layer '", req.layer, "' takes K = ",
                                                   layer.k, " (its weight is [", layer.n, ", ", layer.k, "])"));
  }
  DType out = req.out_dtype.value_or(x.dtype());
  if (!IsActivationDType(out)) {
    return absl::InvalidArgumentError(absl::StrCat("out_dtype ", DN(out), " is not F32, F16 or BF16"));
  }
  if (layer.kind == LinearKind::kW4A16 && x.dtype() != DType::kF32 && out != x.dtype()) {
    return absl::InvalidArgumentError(absl::StrCat("layer '", req.layer, "' is ", layer.scheme,
                                                   ": its output dtype is the activation dtype ", DN(x.dtype()),
                                                   ", not ", DN(out)));
  }
  if (const int64_t bytes = m * layer.n * static_cast<int64_t>(DTypeSize(out));
      req.max_result_bytes > 0 && bytes > req.max_result_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat("the result [", m, ", ", layer.n, "] ", DN(out), " would be ",
                                                     bytes, " bytes, over the ", req.max_result_bytes,
                                                     " bytes the server's message limit leaves for it; send fewer "
                                                     "rows or ask for a 16-bit output dtype"));
  }
  BatchItem item;
  // Points at the layer but owns the whole model: while the request is anywhere in the batcher,
  // the model (and with it its count in the memory budget) stays, even if it is unloaded.
  item.layer = std::shared_ptr<const PreparedLinear>(model, &layer);
  if (layer.kind == LinearKind::kW8A8Static) {
    // Quantized here, in the request's thread, so a refusal is this request's alone; the batch
    // then carries int8 rows (RunBatch).
    absl::StatusOr<Tensor> q = QuantizeStaticInt8(x, *layer.input_scale, req.layer, layer.scheme);
    if (!q.ok()) return q.status();
    item.x = *std::move(q);
  } else {
    item.x = x;
  }
  item.out_dtype = out;
  return batcher_->Run(std::move(item), control);
}

absl::Status Engine::RunBatch(const PreparedLinear& layer, DType x_dtype, DType out_dtype,
                              const std::vector<const Tensor*>& xs, std::vector<Tensor>* ys, ExecutionTiming* timing) {
  kernels::Backend& be = *handle_->backend;
  const auto t_in = std::chrono::steady_clock::now();
  const int64_t k = layer.k, n = layer.n;
  int64_t m = 0;
  for (const Tensor* x : xs) m += x->dim(0);

  // Host-side preparation: W4A16 with F32 activations converts them to the model dtype first.
  // (W8A8 static rows arrive quantized to int8: Engine::Gemm.)
  DType dev_x_dtype = x_dtype;
  std::vector<Tensor> host_parts;
  host_parts.reserve(xs.size());
  if (layer.kind == LinearKind::kW4A16 && x_dtype == DType::kF32) {
    dev_x_dtype = layer.w4_compute_dtype;
    for (const Tensor* x : xs) host_parts.push_back(Convert(*x, dev_x_dtype));
  } else {
    for (const Tensor* x : xs) host_parts.push_back(*x);
  }
  const DType kernel_y = layer.kind == LinearKind::kW4A16 ? dev_x_dtype : out_dtype;

  std::lock_guard<std::mutex> lock(handle_->mu);
  Scratch scratch(be);
  const size_t xbytes = static_cast<size_t>(m) * k * DTypeSize(dev_x_dtype);
  absl::StatusOr<void*> xd = scratch.Alloc(xbytes);
  if (!xd.ok()) return xd.status();
  size_t off = 0;
  for (const Tensor& part : host_parts) {
    if (kernels::Status s = be.CopyIn(static_cast<uint8_t*>(*xd) + off, part.bytes().data(), part.nbytes()); !s.ok()) {
      return Kernel(s, layer);
    }
    off += part.nbytes();
  }
  absl::StatusOr<void*> yd = scratch.Alloc(static_cast<size_t>(m) * n * DTypeSize(kernel_y));
  if (!yd.ok()) return yd.status();

  kernels::GemmArgs a;
  a.m = m;
  a.w = layer.weight.get();
  a.bias = layer.bias;
  a.y = *yd;
  a.y_dtype = kernel_y;
  const auto t0 = std::chrono::steady_clock::now();
  timing->input_ns = NsBetween(t_in, t0);
  kernels::Status st;
  switch (layer.kind) {
    case LinearKind::kW8A8Dynamic:
    case LinearKind::kFp8Dynamic: {
      const bool int8 = layer.kind == LinearKind::kW8A8Dynamic;
      absl::StatusOr<void*> q = scratch.Alloc(static_cast<size_t>(m) * k);
      absl::StatusOr<void*> sc = scratch.Alloc(static_cast<size_t>(m) * sizeof(float));
      if (!q.ok()) return q.status();
      if (!sc.ok()) return sc.status();
      st = int8 ? be.QuantizeInt8PerToken(x_dtype, *xd, m, k, static_cast<int8_t*>(*q), static_cast<float*>(*sc))
                : be.QuantizeFp8PerToken(x_dtype, *xd, m, k, static_cast<uint8_t*>(*q), static_cast<float*>(*sc));
      if (!st.ok()) return Kernel(st, layer);
      a.x = *q;
      a.x_dtype = int8 ? DType::kI8 : DType::kF8E4M3;
      a.x_scale = static_cast<const float*>(*sc);
      a.x_scale_count = m;
      st = int8 ? be.GemmW8A8(a) : be.GemmFp8(a);
      break;
    }
    case LinearKind::kW8A8Static:
    case LinearKind::kFp8Static: {
      const bool int8 = layer.kind == LinearKind::kW8A8Static;
      absl::StatusOr<void*> sc = scratch.Alloc(sizeof(float));
      if (!sc.ok()) return sc.status();
      const float s = *layer.input_scale;
      if (kernels::Status c = be.CopyIn(*sc, &s, sizeof(float)); !c.ok()) return Kernel(c, layer);
      a.x_scale = static_cast<const float*>(*sc);
      a.x_scale_count = 1;
      if (int8) {
        a.x = *xd;
        a.x_dtype = DType::kI8;
        st = be.GemmW8A8(a);
      } else {
        absl::StatusOr<void*> q = scratch.Alloc(static_cast<size_t>(m) * k);
        if (!q.ok()) return q.status();
        st = be.QuantizeFp8PerTensor(x_dtype, *xd, m, k, s, static_cast<uint8_t*>(*q));
        if (!st.ok()) return Kernel(st, layer);
        a.x = *q;
        a.x_dtype = DType::kF8E4M3;
        st = be.GemmFp8(a);
      }
      break;
    }
    case LinearKind::kW4A16:
      a.x = *xd;
      a.x_dtype = dev_x_dtype;
      st = be.GemmW4A16(a);
      break;
  }
  if (!st.ok()) return Kernel(st, layer);
  if (kernels::Status s = be.Synchronize(); !s.ok()) return Kernel(s, layer);
  const auto t_out = std::chrono::steady_clock::now();
  timing->infer_ns = NsBetween(t0, t_out);

  // Split the rows back.
  ys->clear();
  const size_t row_bytes = static_cast<size_t>(n) * DTypeSize(kernel_y);
  size_t yoff = 0;
  for (const Tensor* x : xs) {
    Tensor y = Tensor::Zeros(kernel_y, {x->dim(0), n});
    if (kernels::Status s = be.CopyOut(y.mutable_bytes().data(), static_cast<uint8_t*>(*yd) + yoff, y.nbytes());
        !s.ok()) {
      return Kernel(s, layer);
    }
    yoff += static_cast<size_t>(x->dim(0)) * row_bytes;
    ys->push_back(kernel_y == out_dtype ? std::move(y) : Convert(y, out_dtype));
  }
  timing->output_ns = ElapsedNs(t_out);
  layer.stats.Executed(m, *timing);
  return absl::OkStatus();
}

}  // namespace lowbit::runtime
