#include "runtime/model_registry.h"

#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <filesystem>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/file_util.h"
#include "common/hf_config.h"
#include "common/path_guard.h"
#include "common/safetensors.h"
#include "kernels/absl_status.h"
#include "spdlog/spdlog.h"

namespace lowbit::runtime {
namespace {

constexpr size_t kMaxNameLength = 128;

std::optional<std::string> RealPath(const std::string& path) {
  char buf[PATH_MAX];
  if (::realpath(path.c_str(), buf) == nullptr) return std::nullopt;
  return std::string(buf);
}

bool IsDirectory(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

kernels::ScaleView View(const Tensor& t) { return {t.bytes().data(), t.dtype(), t.numel()}; }

// The 16-bit type W4A16 activations given as f32 are rounded to: the checkpoint's float16, else
// bf16 (also for float32 checkpoints; the kernels take f16 or bf16 activations).
absl::StatusOr<DType> ModelDType(const nlohmann::json& config) {
  absl::StatusOr<std::optional<DType>> d = ConfigStorageDType(config);
  if (!d.ok()) return d.status();
  return *d == DType::kF16 ? DType::kF16 : DType::kBF16;
}

// Tensors looked up in a map (kept alive by `owner`), for a streamed load.
TensorSource MapSource(const std::map<std::string, Tensor>& tensors, std::shared_ptr<const void> owner = nullptr) {
  TensorSource source;
  for (const auto& [n, t] : tensors) source.names.push_back(n);
  source.get = [&tensors, owner](const std::string& n) -> absl::StatusOr<Tensor> {
    auto it = tensors.find(n);
    if (it == tensors.end()) return absl::NotFoundError(absl::StrCat("no tensor ", n));
    return it->second;
  };
  return source;
}

absl::StatusOr<nlohmann::json> ParseConfigJson(const std::string& config_json) {
  nlohmann::json config = nlohmann::json::parse(config_json, nullptr, /*allow_exceptions=*/false);
  if (config.is_discarded()) return absl::InvalidArgumentError("config_json is not valid JSON");
  return config;
}

// OK while the call goes on; DEADLINE_EXCEEDED / CANCELLED naming the model and how far its load
// got (`progress`: "after 3 of 7 quantized layers") once it ended.
absl::Status LoadStopped(const CallControl& control, const std::string& name, const std::string& progress) {
  absl::Status s = control.Check();
  if (s.ok()) return s;
  const bool deadline = s.code() == absl::StatusCode::kDeadlineExceeded;
  return absl::Status(s.code(), absl::StrCat(deadline ? "the call's deadline passed" : "the client cancelled the call",
                                             " while loading '", name, "' (", progress,
                                             "); nothing was loaded and its memory was given back"));
}

// A load is published only when its call's deadline is at least this far away: the reply must
// still reach the client in time (the server's deadline runs later than the client's by the
// request's transit), else the client would get DEADLINE_EXCEEDED for a model that is loaded.
constexpr auto kPublishMargin = std::chrono::milliseconds(20);

std::string Count(int64_t n, const char* one, const char* many) { return absl::StrCat(n, " ", n == 1 ? one : many); }

}  // namespace

PreparedLinear::~PreparedLinear() {
  if (bias != nullptr && handle) {
    std::lock_guard<std::mutex> lock(handle->mu);
    handle->backend->Free(bias);
  }
}

LoadedModel::~LoadedModel() {
  layers.clear();  // frees the weights nothing else holds before the budget gets their bytes back
  if (!ledger) return;
  std::function<void()> released;
  {
    std::lock_guard<std::mutex> lock(ledger->mu);
    ledger->bytes -= bytes;
    --ledger->models;
    released = ledger->on_release;
  }
  if (released) released();
}

ModelRegistry::~ModelRegistry() {
  // The models still loaded are destroyed with models_ after this; nobody is told any more.
  std::lock_guard<std::mutex> lock(ledger_->mu);
  ledger_->on_release = nullptr;
}

void ModelRegistry::SetReleaseCallback(std::function<void()> callback) {
  std::lock_guard<std::mutex> lock(ledger_->mu);
  ledger_->on_release = std::move(callback);
}

absl::StatusOr<std::unique_ptr<ModelRegistry>> ModelRegistry::Create(std::shared_ptr<BackendHandle> handle,
                                                                     RegistryOptions options) {
  if (!handle || !handle->backend) return absl::InvalidArgumentError("model registry: no backend");
  if (options.memory_budget_bytes < 0) {
    return absl::InvalidArgumentError(absl::StrCat("memory budget ", options.memory_budget_bytes, " is negative"));
  }
  std::string root;
  if (!options.model_root.empty()) {
    std::optional<std::string> real = RealPath(options.model_root);
    if (!real || !IsDirectory(*real)) {
      return absl::InvalidArgumentError(absl::StrCat("model root '", options.model_root, "' is not a directory"));
    }
    root = *real;
  }
  return std::unique_ptr<ModelRegistry>(new ModelRegistry(std::move(handle), std::move(options), std::move(root)));
}

absl::Status ModelRegistry::CheckName(const std::string& name) const {
  if (name.empty()) return absl::InvalidArgumentError("model name is empty");
  if (name.size() > kMaxNameLength) {
    return absl::InvalidArgumentError(absl::StrCat("model name is ", name.size(), " characters; the limit is ",
                                                   kMaxNameLength));
  }
  for (char c : name) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.' || c == ':' || c == '/')) {
      return absl::InvalidArgumentError(absl::StrCat("model name '", name,
                                                     "' may contain only letters, digits and - _ . : /"));
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  return NameFreeLocked(name);
}

absl::Status ModelRegistry::NameFreeLocked(const std::string& name) const {
  if (models_.count(name)) {
    return absl::AlreadyExistsError(absl::StrCat("a model named '", name, "' is already loaded (unload it first)"));
  }
  if (loading_.count(name)) {
    return absl::AlreadyExistsError(absl::StrCat("a model named '", name,
                                                 "' is being loaded by another call (or a load whose call ended is "
                                                 "stopping); retry once it has finished"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ModelRegistry::ResolvePath(const std::string& path) const {
  if (root_.empty()) return absl::FailedPreconditionError("this server has no model root: load models by stream");
  absl::StatusOr<std::string> real = ResolveUnderRoot(root_, path, "path");
  if (!real.ok()) return real.status();
  if (!IsDirectory(*real)) {
    return absl::InvalidArgumentError(absl::StrCat("path '", path, "' is not a directory (give the checkpoint directory)"));
  }
  return *real;
}

std::vector<std::string> ModelRegistry::Checkpoints() const {
  std::vector<std::string> out;
  if (root_.empty()) return out;
  std::error_code ec;
  for (std::filesystem::directory_iterator it(root_, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    absl::StatusOr<std::string> dir = ResolvePath(name);
    if (dir.ok() && std::filesystem::is_regular_file(*dir + "/config.json", ec)) out.push_back(name);
  }
  std::sort(out.begin(), out.end());
  return out;
}

absl::StatusOr<std::shared_ptr<const LoadedModel>> ModelRegistry::LoadFromPath(const std::string& name,
                                                                               const std::string& path,
                                                                               const CallControl& control) {
  if (absl::Status s = CheckName(name); !s.ok()) return s;
  absl::StatusOr<std::string> dir = ResolvePath(path);
  if (!dir.ok()) return dir.status();
  return LoadFromDirectory(name, *dir, path, path, control);
}

absl::StatusOr<std::shared_ptr<const LoadedModel>> ModelRegistry::LoadFromCopy(const std::string& name,
                                                                               const std::string& dir,
                                                                               const CallControl& control) {
  if (absl::Status s = CheckName(name); !s.ok()) return s;
  return LoadFromDirectory(name, dir, dir, "stream", control);
}

absl::StatusOr<std::shared_ptr<const LoadedModel>> ModelRegistry::LoadFromDirectory(const std::string& name,
                                                                                    const std::string& dir,
                                                                                    const std::string& shown,
                                                                                    const std::string& source_label,
                                                                                    const CallControl& control) {
  absl::StatusOr<std::string> text = ReadFileToString(dir + "/config.json");
  if (!text.ok()) {
    return absl::FailedPreconditionError(absl::StrCat("path '", shown, "' has no readable config.json: not a checkpoint"));
  }
  nlohmann::json config = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (config.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(shown, "/config.json is not valid JSON"));
  absl::StatusOr<std::unique_ptr<SafetensorsModel>> st = SafetensorsModel::Open(dir);
  if (!st.ok()) return absl::Status(st.status().code(), absl::StrCat(shown, ": ", st.status().message()));
  std::shared_ptr<SafetensorsModel> model = *std::move(st);
  TensorSource source;
  source.names = model->names();
  source.get = [model](const std::string& n) { return model->Get(n); };
  return Load(name, source_label, config, source, control);
}

absl::StatusOr<std::shared_ptr<const LoadedModel>> ModelRegistry::LoadFromTensors(const std::string& name,
                                                                                  const std::string& config_json,
                                                                                  std::map<std::string, Tensor> tensors,
                                                                                  const CallControl& control) {
  if (absl::Status s = CheckName(name); !s.ok()) return s;
  absl::StatusOr<nlohmann::json> config = ParseConfigJson(config_json);
  if (!config.ok()) return config.status();
  auto owned = std::make_shared<std::map<std::string, Tensor>>(std::move(tensors));
  TensorSource source = MapSource(*owned, owned);
  source.release = [owned] { owned->clear(); };
  return Load(name, "stream", *config, source, control);
}

int64_t ModelRegistry::BytesLeftLocked() const {
  if (options_.memory_budget_bytes == 0) return INT64_MAX;
  int64_t held = 0;
  {
    std::lock_guard<std::mutex> lock(ledger_->mu);
    held = ledger_->bytes;
  }
  return std::max<int64_t>(0, options_.memory_budget_bytes - held - reserved_);
}

std::string ModelRegistry::BudgetUseLocked(int64_t own_reserved) const {
  int64_t published = 0;
  for (const auto& [n, m] : models_) published += m->bytes;
  int64_t held = 0, held_models = 0;
  {
    std::lock_guard<std::mutex> lock(ledger_->mu);
    held = ledger_->bytes;
    held_models = ledger_->models;
  }
  const int64_t loads = static_cast<int64_t>(loading_.size()) - (own_reserved >= 0 ? 1 : 0);
  const int64_t reserved = reserved_ - std::max<int64_t>(own_reserved, 0);
  std::string out = absl::StrCat("(", published, " used by ", Count(models_.size(), "loaded model", "loaded models"),
                                 ", ", reserved, " reserved by ", Count(loads, "load", "loads"), " in progress");
  if (held > published) {
    absl::StrAppend(&out, ", ", held - published, " still held by ",
                    Count(held_models - static_cast<int64_t>(models_.size()), "unloaded model", "unloaded models"),
                    " that running GEMMs use");
  }
  out += ")";
  return out;
}

int64_t ModelRegistry::bytes_left() const {
  std::lock_guard<std::mutex> lock(mu_);
  return BytesLeftLocked();
}

int64_t ModelRegistry::used_bytes() const {
  std::lock_guard<std::mutex> lock(ledger_->mu);
  return ledger_->bytes;
}

size_t ModelRegistry::model_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return models_.size();
}

absl::StatusOr<std::shared_ptr<PreparedLinear>> ModelRegistry::Prepare(const LinearSpec& spec, DType model_dtype) {
  auto out = std::make_shared<PreparedLinear>();
  out->module = spec.module;
  out->scheme = spec.scheme;
  out->activations = spec.activations;
  out->kind = spec.kind;
  out->n = spec.n;
  out->k = spec.k;
  out->group_size = spec.group_size;
  out->asymmetric = spec.asymmetric;
  out->act_order = spec.act_order;
  out->input_scale = spec.input_scale;
  out->has_bias = !spec.bias.empty();
  DType sd = spec.weight_scale.dtype();
  out->w4_compute_dtype = (sd == DType::kF16 || sd == DType::kBF16) ? sd : model_dtype;
  out->handle = handle_;
  kernels::Backend& be = *handle_->backend;
  std::lock_guard<std::mutex> lock(handle_->mu);
  kernels::Status st;
  switch (spec.kind) {
    case LinearKind::kW8A8Dynamic:
    case LinearKind::kW8A8Static: {
      kernels::Int8WeightSource src{spec.weight.data<int8_t>(), spec.n, spec.k, View(spec.weight_scale)};
      st = be.PrepareInt8(src, &out->weight);
      break;
    }
    case LinearKind::kFp8Static:
    case LinearKind::kFp8Dynamic: {
      kernels::Fp8WeightSource src{spec.weight.data<uint8_t>(), spec.n, spec.k, View(spec.weight_scale)};
      st = be.PrepareFp8(src, &out->weight);
      break;
    }
    case LinearKind::kW4A16: {
      kernels::Int4WeightSource src;
      src.weight_packed = spec.weight.data<int32_t>();
      src.n = spec.n;
      src.k = spec.k;
      src.group_size = spec.group_size;
      src.scale = View(spec.weight_scale);
      src.zero_point_packed = spec.zero_point ? spec.zero_point->data<int32_t>() : nullptr;
      src.g_idx = spec.g_idx ? spec.g_idx->data<int32_t>() : nullptr;
      st = be.PrepareInt4(src, &out->weight);
      break;
    }
  }
  if (!st.ok()) {
    absl::Status s = kernels::ToAbslStatus(st);
    return absl::Status(s.code(), absl::StrCat("layer ", spec.module, " (", spec.scheme, "): backend ", be.name(),
                                               " refused the weight: ", s.message()));
  }
  if (!spec.bias.empty()) {
    void* p = nullptr;
    size_t nbytes = spec.bias.size() * sizeof(float);
    kernels::Status a = be.Alloc(nbytes, &p);
    if (!a.ok()) return absl::ResourceExhaustedError(absl::StrCat("layer ", spec.module, ": ", a.message()));
    out->bias = static_cast<float*>(p);
    if (kernels::Status c = be.CopyIn(p, spec.bias.data(), nbytes); !c.ok()) return kernels::ToAbslStatus(c);
  }
  out->bytes = out->weight->bytes() + static_cast<int64_t>(spec.bias.size() * sizeof(float));
  return out;
}

absl::Status ModelRegistry::GrowReservation(const std::string& name, int64_t reserved, int64_t need) {
  std::lock_guard<std::mutex> lock(mu_);
  const int64_t left = BytesLeftLocked();
  if (need - reserved > left) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "loading '", name, "' needs at least ", need, " bytes in the ", handle_->backend->name(),
        " backend's weight layout but only ", reserved + left, " of the ", options_.memory_budget_bytes,
        "-byte memory budget are left ", BudgetUseLocked(reserved), "; unload a model or raise --memory_budget_bytes"));
  }
  reserved_ += need - reserved;
  return absl::OkStatus();
}

absl::Status ModelRegistry::ReserveLoad(const std::string& name, int64_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  if (absl::Status s = NameFreeLocked(name); !s.ok()) return s;
  const int64_t left = BytesLeftLocked();
  if (bytes > left) {
    return absl::ResourceExhaustedError(
        absl::StrCat("loading '", name, "' needs ", bytes, " bytes of weights but only ", left, " of the ",
                     options_.memory_budget_bytes, "-byte memory budget are left ", BudgetUseLocked(),
                     "; unload a model or raise --memory_budget_bytes"));
  }
  loading_.insert(name);
  reserved_ += bytes;
  return absl::OkStatus();
}

absl::Status ModelRegistry::AddPrepared(const std::string& name, const LinearSpec& spec, DType model_dtype,
                                        LoadedModel& model, int64_t* reserved) {
  if (options_.test_layer_pause_ms > 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(options_.test_layer_pause_ms));
  }
  absl::StatusOr<std::shared_ptr<PreparedLinear>> p = Prepare(spec, model_dtype);
  if (!p.ok()) return p.status();
  model.bytes += (*p)->bytes;
  model.layers[spec.module] = *std::move(p);
  if (model.bytes > *reserved) {
    // The backend's layout outgrew the reservation (an estimate, or nothing for a streamed load;
    // e.g. FP8 held as bf16 on the CPU): grow it while the budget allows, else refuse before
    // preparing more.
    if (absl::Status grown = GrowReservation(name, *reserved, model.bytes); !grown.ok()) return grown;
    *reserved = model.bytes;
  }
  return absl::OkStatus();
}

void ModelRegistry::ReleaseLoad(const std::string& name, int64_t reserved) {
  std::lock_guard<std::mutex> lock(mu_);
  loading_.erase(name);
  reserved_ -= reserved;
}

absl::StatusOr<std::shared_ptr<const LoadedModel>> ModelRegistry::CommitLoad(std::shared_ptr<LoadedModel> model,
                                                                             int64_t reserved,
                                                                             const CallControl& control) {
  // Asked outside the lock (the question can take tens of µs). A deadline closer than
  // kPublishMargin counts as passed: the reply could not reach the client in time.
  absl::Status s =
      LoadStopped(control, model->name, absl::StrCat("all ", model->layers.size(), " quantized layers prepared"));
  if (s.ok() && control.deadline != std::chrono::system_clock::time_point::max() &&
      std::chrono::system_clock::now() + kPublishMargin >= control.deadline) {
    s = absl::DeadlineExceededError(
        absl::StrCat("the call's deadline is less than ", kPublishMargin.count(), " ms away after loading '",
                     model->name, "' (all ", model->layers.size(),
                     " quantized layers prepared): too close to reply in time, so nothing was "
                     "loaded and its memory was given back; retry with a longer deadline"));
  }
  if (!s.ok()) {
    const std::string name = model->name;
    model.reset();  // its weights go before its reservation does
    ReleaseLoad(name, reserved);
    spdlog::info("load of model '{}' stopped: {}", name, std::string(s.message()));
    return s;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    std::lock_guard<std::mutex> ledger_lock(ledger_->mu);
    loading_.erase(model->name);
    reserved_ -= reserved;
    ledger_->bytes += model->bytes;
    ++ledger_->models;
    model->ledger = ledger_;
    models_[model->name] = model;
  }
  spdlog::info("loaded model '{}' from {}: {} quantized layers, {} bytes", model->name, model->source,
               model->layers.size(), model->bytes);
  return model;
}

absl::StatusOr<std::shared_ptr<const LoadedModel>> ModelRegistry::Load(const std::string& name,
                                                                       const std::string& source,
                                                                       const nlohmann::json& config,
                                                                       const TensorSource& tensors,
                                                                       const CallControl& control) {
  absl::StatusOr<CheckpointLinears> found = FindQuantizedLinears(config, tensors);
  if (!found.ok()) return found.status();
  absl::StatusOr<DType> model_dtype = ModelDType(config);
  if (!model_dtype.ok()) return model_dtype.status();
  // From here each spec holds its own tensors: a streamed model's memory goes layer by layer as
  // the backend's copies are made (peak ≈ the received bytes, not received + prepared).
  if (tensors.release) tensors.release();
  int64_t need = 0;
  for (const LinearSpec& s : found->linears) need += s.EstimatedBytes();
  if (absl::Status s = ReserveLoad(name, need); !s.ok()) return s;
  auto model = std::make_shared<LoadedModel>();
  model->name = name;
  model->source = source;
  model->float_layers.insert(found->float_linears.begin(), found->float_linears.end());
  const size_t total = found->linears.size();
  for (size_t i = 0; i < total; ++i) {
    LinearSpec& spec = found->linears[i];
    // The call is asked before each layer (≈ 30 µs under gRPC's sync API, against milliseconds
    // of preparing): a load whose client went away or whose deadline passed stops here.
    absl::Status s = LoadStopped(control, name, absl::StrCat("after ", i, " of ", total, " quantized layers"));
    if (s.ok()) s = AddPrepared(name, spec, *model_dtype, *model, &need);
    if (!s.ok()) {
      model.reset();  // its weights go before its reservation does
      ReleaseLoad(name, need);
      if (absl::IsDeadlineExceeded(s) || absl::IsCancelled(s))
        spdlog::info("load of model '{}' stopped: {}", name, std::string(s.message()));
      return s;
    }
    spec = LinearSpec{};  // its host tensors are no longer needed
  }
  return CommitLoad(std::move(model), need, control);
}

absl::StatusOr<std::unique_ptr<ModelRegistry::StreamedLoad>> ModelRegistry::BeginStreamedLoad(
    const std::string& name, const std::string& config_json,
    const std::vector<std::pair<std::string, int64_t>>& manifest) {
  if (absl::Status s = CheckName(name); !s.ok()) return s;
  absl::StatusOr<nlohmann::json> config = ParseConfigJson(config_json);
  if (!config.ok()) return config.status();
  std::vector<std::string> names;
  for (const auto& [n, bytes] : manifest) names.push_back(n);
  absl::StatusOr<LinearPlan> plan = PlanQuantizedLinears(*config, names);
  if (!plan.ok()) return plan.status();
  absl::StatusOr<DType> model_dtype = ModelDType(*config);
  if (!model_dtype.ok()) return model_dtype.status();
  auto load = std::unique_ptr<StreamedLoad>(new StreamedLoad());
  load->registry_ = this;
  load->name_ = name;
  load->model_dtype_ = *model_dtype;
  load->plan_ = *std::move(plan);
  load->pending_.resize(load->plan_.linears.size());
  load->missing_.assign(load->plan_.linears.size(), 0);
  // A Linear's tensors are the manifest's names under "<module>.".
  for (size_t i = 0; i < load->plan_.linears.size(); ++i) {
    const std::string prefix = load->plan_.linears[i].module + ".";
    const std::set<std::string>& names = load->plan_.names;
    for (auto it = names.lower_bound(prefix); it != names.end() && absl::StartsWith(*it, prefix); ++it) {
      load->module_of_[*it] = i;
      ++load->missing_[i];
    }
  }
  load->model_ = std::make_shared<LoadedModel>();
  load->model_->name = name;
  load->model_->source = "stream";
  load->model_->float_layers.insert(load->plan_.float_linears.begin(), load->plan_.float_linears.end());
  int64_t need = 0;
  for (const auto& [n, bytes] : manifest) {
    if (load->Reads(n)) need += bytes;
  }
  if (absl::Status s = ReserveLoad(name, need); !s.ok()) return s;
  load->reserved_ = need;
  load->active_ = true;
  return load;
}

ModelRegistry::StreamedLoad::~StreamedLoad() {
  model_.reset();  // frees what was prepared before the reservation goes
  if (active_) registry_->ReleaseLoad(name_, reserved_);
}

absl::Status ModelRegistry::StreamedLoad::Add(const std::string& name, Tensor tensor) {
  if (!plan_.names.count(name)) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' is not in the header's manifest"));
  }
  auto it = module_of_.find(name);
  if (it == module_of_.end()) return absl::OkStatus();  // no quantized Linear reads it
  const size_t i = it->second;
  if (missing_[i] == 0 || !pending_[i].emplace(name, std::move(tensor)).second) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' sent twice"));
  }
  if (--missing_[i] > 0) return absl::OkStatus();
  absl::StatusOr<LinearSpec> spec = ReadQuantizedLinear(plan_.linears[i], plan_.names, MapSource(pending_[i]));
  if (!spec.ok()) return spec.status();
  absl::Status s = registry_->AddPrepared(name_, *spec, model_dtype_, *model_, &reserved_);
  pending_[i].clear();
  return s;
}

absl::StatusOr<std::shared_ptr<const LoadedModel>> ModelRegistry::StreamedLoad::Finish(const CallControl& control) {
  for (size_t i = 0; i < missing_.size(); ++i) {
    if (missing_[i] > 0) {
      return absl::InvalidArgumentError(absl::StrCat("the stream ended before every tensor of layer ",
                                                     plan_.linears[i].module, " arrived (", missing_[i],
                                                     " missing)"));
    }
  }
  active_ = false;  // CommitLoad publishes or gives everything back
  return registry_->CommitLoad(std::move(model_), reserved_, control);
}

absl::Status ModelRegistry::Unload(const std::string& name) {
  std::shared_ptr<const LoadedModel> model;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = models_.find(name);
    if (it == models_.end()) return absl::NotFoundError(absl::StrCat("no model named '", name, "' is loaded"));
    model = it->second;
    models_.erase(it);
  }
  // The bytes go back to the budget when the last reference does (~LoadedModel): now, unless a
  // running GEMM still holds the model.
  const bool held = model.use_count() > 1;
  const int64_t bytes = model->bytes;
  model.reset();
  if (held) {
    spdlog::info("unloaded model '{}'; its {} bytes stay counted until the GEMMs running on it end", name, bytes);
  } else {
    spdlog::info("unloaded model '{}'", name);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<const LoadedModel>> ModelRegistry::Get(const std::string& name) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = models_.find(name);
  if (it == models_.end()) {
    return absl::NotFoundError(absl::StrCat("no model named '", name, "' is loaded (", models_.size(),
                                            " models loaded; see ListModels)"));
  }
  return it->second;
}

std::vector<std::shared_ptr<const LoadedModel>> ModelRegistry::List() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::shared_ptr<const LoadedModel>> out;
  for (const auto& [n, m] : models_) out.push_back(m);
  return out;
}

}  // namespace lowbit::runtime
