#include "runtime/service/kserve_service.h"

#include <algorithm>
#include <climits>
#include <set>
#include <span>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "rpc/status.h"
#include "rpc/wire.h"
#include "runtime/service/concurrent_stream.h"
#include "runtime/service/grpc_call_control.h"

namespace lowbit::runtime {
namespace {

constexpr char kVersion[] = "1";  // every layer model has this one version
constexpr char kInput[] = "x";
constexpr char kOutput[] = "y";

// A KServe model name: a loaded model's layer.
struct LayerModel {
  std::shared_ptr<const PreparedLinear> layer;
  std::string model_name, layer_name;
};

absl::Status CheckVersion(const std::string& name, const std::string& version) {
  if (version.empty() || version == kVersion) return absl::OkStatus();
  return absl::NotFoundError(absl::StrCat("model '", name, "' has only version ", kVersion,
                                          " (the request asked for version '", version, "')"));
}

// The KServe name of a loaded model's layer (FindLayerModel splits it again).
std::string LayerModelName(const std::string& model, const std::string& layer) {
  return absl::StrCat(model, "/", layer);
}

// "<model>/<layer>", split at the last '/'. NOT_FOUND names what is missing; a loaded model's
// own name is INVALID_ARGUMENT, pointing at its layers.
absl::StatusOr<LayerModel> FindLayerModel(ModelRegistry& registry, const std::string& name) {
  if (auto whole = registry.Get(name); whole.ok()) {
    const std::string example = (*whole)->layers.empty() ? "" : (*whole)->layers.begin()->first;
    return absl::InvalidArgumentError(absl::StrCat("'", name,
                                                   "' is a loaded model; KServe models are its layers, named "
                                                   "'<model>/<layer>' (e.g. '",
                                                   LayerModelName(name, example), "')"));
  }
  const size_t slash = name.rfind('/');
  if (slash == std::string::npos || slash == 0 || slash + 1 == name.size()) {
    return absl::NotFoundError(absl::StrCat("no model '", name,
                                            "': KServe model names are '<loaded model>/<layer>' (ListModels "
                                            "lists the loaded models and their layers)"));
  }
  LayerModel out;
  out.model_name = name.substr(0, slash);
  out.layer_name = name.substr(slash + 1);
  auto model = registry.Get(out.model_name);
  if (!model.ok()) {
    return absl::NotFoundError(absl::StrCat("no model '", name, "': ", model.status().message()));
  }
  auto it = (*model)->layers.find(out.layer_name);
  if (it == (*model)->layers.end()) {
    return absl::NotFoundError(absl::StrCat("no model '", name, "': model '", out.model_name,
                                            "' has no quantized layer '", out.layer_name, "'"));
  }
  out.layer = it->second;
  return out;
}

// FindLayerModel, then the version (CheckVersion): what every call naming a model checks first.
absl::StatusOr<LayerModel> FindLayerModel(ModelRegistry& registry, const std::string& name,
                                          const std::string& version) {
  absl::StatusOr<LayerModel> found = FindLayerModel(registry, name);
  if (!found.ok()) return found.status();
  if (absl::Status s = CheckVersion(name, version); !s.ok()) return s;
  return found;
}

void AddTensorMetadata(const char* name, DType dtype, int64_t dim,
                       google::protobuf::RepeatedPtrField<inference::ModelMetadataResponse::TensorMetadata>* out) {
  inference::ModelMetadataResponse::TensorMetadata* t = out->Add();
  t->set_name(name);
  t->set_datatype(KServeDatatype(dtype));
  t->add_shape(-1);
  t->add_shape(dim);
}

// A tensor or request parameter the layers do not implement (shared memory, classification,
// sequences): refused rather than ignored, which would answer something else than was asked.
absl::Status UnsupportedParameter(const std::string& where, const std::string& name) {
  return absl::InvalidArgumentError(absl::StrCat(where, " has parameter '", name,
                                                 "', which lowbit-runtime does not implement (no shared memory, "
                                                 "classification or sequence extensions)"));
}

// The repository calls know one repository, the model root, named "".
absl::Status CheckRepository(const std::string& name) {
  if (name.empty()) return absl::OkStatus();
  return absl::NotFoundError(absl::StrCat("no repository '", name,
                                          "': lowbit-runtime has one, its model root, named '' (leave "
                                          "repository_name empty)"));
}

void DurationToProto(const DurationStat& d, inference::StatisticDuration* out) {
  out->set_count(d.count);
  out->set_ns(d.ns);
}

void StatisticsToProto(const std::string& name, const PreparedLinear& layer, inference::ModelStatistics* out) {
  const LayerStatsSnapshot s = layer.stats.Snapshot();
  out->set_name(name);
  out->set_version(kVersion);
  out->set_last_inference(s.last_inference_ms);
  out->set_inference_count(s.inference_count);
  out->set_execution_count(s.execution_count);
  inference::InferStatistics* is = out->mutable_inference_stats();
  DurationToProto(s.success, is->mutable_success());
  DurationToProto(s.fail, is->mutable_fail());
  DurationToProto(s.queue, is->mutable_queue());
  DurationToProto(s.compute_input, is->mutable_compute_input());
  DurationToProto(s.compute_infer, is->mutable_compute_infer());
  DurationToProto(s.compute_output, is->mutable_compute_output());
  for (const auto& [rows, b] : s.batches) {
    inference::InferBatchStatistics* bs = out->add_batch_stats();
    bs->set_batch_size(rows);
    DurationToProto(b.input, bs->mutable_compute_input());
    DurationToProto(b.infer, bs->mutable_compute_infer());
    DurationToProto(b.output, bs->mutable_compute_output());
  }
}

// The input's bytes (copied once, into the tensor the engine takes), shaped [rows, K].
absl::StatusOr<Tensor> InputTensor(const inference::ModelInferRequest& req) {
  const std::string& model_name = req.model_name();
  if (req.inputs_size() != 1) {
    return absl::InvalidArgumentError(absl::StrCat("model '", model_name, "' takes one input '", kInput,
                                                   "' [..., K]; the request has ", req.inputs_size()));
  }
  const inference::ModelInferRequest::InferInputTensor& in = req.inputs(0);
  if (in.name() != kInput) {
    return absl::InvalidArgumentError(
        absl::StrCat("model '", model_name, "' has no input '", in.name(), "'; its one input is '", kInput, "'"));
  }
  if (!in.parameters().empty()) return UnsupportedParameter("input 'x'", in.parameters().begin()->first);
  absl::StatusOr<DType> dtype = ActivationDTypeFromKServe(in.datatype(), "input 'x'");
  if (!dtype.ok()) return dtype.status();
  Shape shape(in.shape().begin(), in.shape().end());
  if (shape.empty()) return absl::InvalidArgumentError("input 'x' has no shape; it takes [..., K]");
  absl::StatusOr<int64_t> numel = NumElements(shape);
  if (!numel.ok()) return absl::InvalidArgumentError(absl::StrCat("input 'x': ", numel.status().message()));
  // The rows, the leading dims' product: NumElements bounded it (a zero K comes last, after it).
  int64_t rows = 1;
  for (size_t i = 0; i + 1 < shape.size(); ++i) rows *= shape[i];
  const bool has_contents = in.has_contents() && in.contents().ByteSizeLong() > 0;
  std::span<const uint8_t> data;
  if (req.raw_input_contents_size() > 0) {
    if (req.raw_input_contents_size() != 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("the request has ", req.raw_input_contents_size(), " raw_input_contents for its 1 input"));
    }
    if (has_contents) {
      return absl::InvalidArgumentError("input 'x' has both contents and raw_input_contents; send one of them");
    }
    const std::string& raw = req.raw_input_contents(0);
    data = {reinterpret_cast<const uint8_t*>(raw.data()), raw.size()};
  } else if (has_contents) {
    if (*dtype != DType::kF32) {
      return absl::InvalidArgumentError(absl::StrCat("input 'x' is ", in.datatype(),
                                                     ", which has no typed contents in the protocol; send its bytes "
                                                     "in raw_input_contents"));
    }
    const inference::InferTensorContents& c = in.contents();
    const int other_values = c.bool_contents_size() + c.int_contents_size() + c.int64_contents_size() +
                             c.uint_contents_size() + c.uint64_contents_size() + c.fp64_contents_size() +
                             c.bytes_contents_size();
    if (c.fp32_contents_size() == 0 || other_values > 0) {
      return absl::InvalidArgumentError("input 'x' is FP32 but its contents are not fp32_contents alone");
    }
    const auto& values = c.fp32_contents();
    data = {reinterpret_cast<const uint8_t*>(values.data()), values.size() * sizeof(float)};
  } else {
    return absl::InvalidArgumentError("input 'x' carries no data (neither raw_input_contents nor contents)");
  }
  const size_t elem = DTypeSize(*dtype);  // compared in elements: numel · elem may overflow
  if (data.size() % elem != 0 || static_cast<int64_t>(data.size() / elem) != *numel) {
    return absl::InvalidArgumentError(absl::StrCat("input 'x' has ", data.size(), " data bytes, but shape ",
                                                   ShapeString(shape), " of ", in.datatype(), " holds ", *numel,
                                                   " elements of ", elem, " bytes"));
  }
  return Tensor::FromBytes(*dtype, {rows, shape.back()}, data);
}

}  // namespace

absl::StatusOr<DType> ActivationDTypeFromKServe(const std::string& datatype, const std::string& what) {
  if (datatype == "FP32") return DType::kF32;
  if (datatype == "FP16") return DType::kF16;
  if (datatype == "BF16") return DType::kBF16;
  return absl::InvalidArgumentError(
      absl::StrCat(what, " has datatype '", datatype, "'; the layers take FP32, FP16 or BF16"));
}

std::string KServeDatatype(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "FP32";
    case DType::kF16:
      return "FP16";
    case DType::kBF16:
      return "BF16";
    case DType::kI8:
      return "INT8";
    case DType::kU8:
      return "UINT8";
    case DType::kI32:
      return "INT32";
    case DType::kI64:
      return "INT64";
    case DType::kF8E4M3:
      return "FP8_E4M3";
  }
  return "";
}

KServeServiceImpl::KServeServiceImpl(Engine* engine, rpc::ServiceContext service, RuntimeServiceOptions options)
    : engine_(engine), service_(std::move(service)), options_(options) {
  MarkMethodStreamed(rpc::MethodIndex("/inference.GRPCInferenceService/ModelStreamInfer"),
                     rpc::RawHandler(this, &KServeServiceImpl::ModelStreamInferRaw));
}

grpc::Status KServeServiceImpl::ServerLive(grpc::ServerContext*, const inference::ServerLiveRequest*,
                                           inference::ServerLiveResponse* resp) {
  resp->set_live(true);
  return grpc::Status::OK;
}

grpc::Status KServeServiceImpl::ServerReady(grpc::ServerContext*, const inference::ServerReadyRequest*,
                                            inference::ServerReadyResponse* resp) {
  // A draining server refuses new calls (UNAVAILABLE), so any answer is "ready".
  resp->set_ready(true);
  return grpc::Status::OK;
}

grpc::Status KServeServiceImpl::ModelReady(grpc::ServerContext* ctx, const inference::ModelReadyRequest* req,
                                           inference::ModelReadyResponse* resp) {
  rpc::CallGuard guard(ctx, service_, "ModelReady");
  if (!guard.ok()) return guard.Finish(guard.auth_status());
  // Ready = ModelInfer would take it: a layer model (a whole loaded model is not one).
  resp->set_ready(FindLayerModel(engine_->registry(), req->name(), req->version()).ok());
  return guard.Finish(grpc::Status::OK);
}

grpc::Status KServeServiceImpl::ServerMetadata(grpc::ServerContext* ctx, const inference::ServerMetadataRequest*,
                                               inference::ServerMetadataResponse* resp) {
  rpc::CallGuard guard(ctx, service_, "ServerMetadata");
  if (!guard.ok()) return guard.Finish(guard.auth_status());
  resp->set_name("lowbit-runtime");
  resp->set_version(kRuntimeVersion);
  // Triton's names for the extensions served (perf_analyzer reads server statistics only when
  // "statistics" is listed); "parameters": request parameters such as out_dtype.
  for (const char* e :
       {"model_configuration", "model_repository", "model_repository(unload_dependents)", "parameters", "statistics"}) {
    resp->add_extensions(e);
  }
  return guard.Finish(grpc::Status::OK);
}

grpc::Status KServeServiceImpl::ModelMetadata(grpc::ServerContext* ctx, const inference::ModelMetadataRequest* req,
                                              inference::ModelMetadataResponse* resp) {
  rpc::CallGuard guard(ctx, service_, "ModelMetadata");
  if (!guard.ok()) return guard.Finish(guard.auth_status());
  absl::StatusOr<LayerModel> found = FindLayerModel(engine_->registry(), req->name(), req->version());
  if (!found.ok()) return guard.Finish(rpc::ToGrpcStatus(found.status()));
  const PreparedLinear& layer = *found->layer;
  resp->set_name(req->name());
  resp->add_versions(kVersion);
  resp->set_platform(absl::StrCat("lowbit:", layer.scheme));
  // The model's own dtype; the other activation dtypes are accepted too.
  AddTensorMetadata(kInput, layer.w4_compute_dtype, layer.k, resp->mutable_inputs());
  AddTensorMetadata(kOutput, layer.w4_compute_dtype, layer.n, resp->mutable_outputs());
  return guard.Finish(grpc::Status::OK);
}

grpc::Status KServeServiceImpl::ModelConfig(grpc::ServerContext* ctx, const inference::ModelConfigRequest* req,
                                            inference::ModelConfigResponse* resp) {
  rpc::CallGuard guard(ctx, service_, "ModelConfig");
  if (!guard.ok()) return guard.Finish(guard.auth_status());
  absl::StatusOr<LayerModel> found = FindLayerModel(engine_->registry(), req->name(), req->version());
  if (!found.ok()) return guard.Finish(rpc::ToGrpcStatus(found.status()));
  const PreparedLinear& layer = *found->layer;
  inference::ModelConfig* config = resp->mutable_config();
  config->set_name(req->name());
  config->set_platform(absl::StrCat("lowbit:", layer.scheme));
  config->set_backend("lowbit");
  config->set_max_batch_size(static_cast<int32_t>(std::min<int64_t>(engine_->options().max_rows, INT32_MAX)));
  const inference::DataType type = layer.w4_compute_dtype == DType::kF16   ? inference::TYPE_FP16
                                   : layer.w4_compute_dtype == DType::kF32 ? inference::TYPE_FP32
                                                                           : inference::TYPE_BF16;
  inference::ModelInput* in = config->add_input();
  in->set_name(kInput);
  in->set_data_type(type);
  in->add_dims(layer.k);
  inference::ModelOutput* out = config->add_output();
  out->set_name(kOutput);
  out->set_data_type(type);
  out->add_dims(layer.n);
  if (const BatcherOptions& b = engine_->options().batching; b.enabled) {
    config->mutable_dynamic_batching()->set_max_queue_delay_microseconds(
        static_cast<uint64_t>(std::max<int64_t>(0, b.max_queue_delay_us)));
  }
  return guard.Finish(grpc::Status::OK);
}

grpc::Status KServeServiceImpl::ModelInfer(grpc::ServerContext* ctx, const inference::ModelInferRequest* req,
                                           inference::ModelInferResponse* resp) {
  rpc::CallGuard guard(ctx, service_, "ModelInfer");
  if (!guard.ok()) return guard.Finish(guard.auth_status());
  return guard.Finish(rpc::ToGrpcStatus(Infer(ControlOf(ctx), *req, resp)));
}

grpc::Status KServeServiceImpl::ModelStatistics(grpc::ServerContext* ctx, const inference::ModelStatisticsRequest* req,
                                                inference::ModelStatisticsResponse* resp) {
  rpc::CallGuard guard(ctx, service_, "ModelStatistics");
  if (!guard.ok()) return guard.Finish(guard.auth_status());
  if (req->name().empty()) {
    if (!req->version().empty() && req->version() != kVersion) {
      return guard.Finish(rpc::ToGrpcStatus(absl::NotFoundError(
          absl::StrCat("no layer model has version '", req->version(), "' (all have ", kVersion, ")"))));
    }
    for (const auto& model : engine_->registry().List()) {
      for (const auto& [name, layer] : model->layers) {
        StatisticsToProto(LayerModelName(model->name, name), *layer, resp->add_model_stats());
      }
    }
    // batch_stats has an entry per GEMM row count seen: every layer of many models can outgrow
    // the message limit (gRPC would refuse to send it without saying why).
    if (const size_t size = resp->ByteSizeLong(); static_cast<int64_t>(size) > options_.max_message_bytes) {
      const int layers = resp->model_stats_size();
      resp->Clear();
      return guard.Finish(rpc::ToGrpcStatus(absl::ResourceExhaustedError(
          absl::StrCat("the statistics of all ", layers, " layer models are ", size, " bytes, over the server's ",
                       options_.max_message_bytes, "-byte message limit; ask for one layer model at a time"))));
    }
    return guard.Finish(grpc::Status::OK);
  }
  absl::StatusOr<LayerModel> found = FindLayerModel(engine_->registry(), req->name(), req->version());
  if (!found.ok()) return guard.Finish(rpc::ToGrpcStatus(found.status()));
  StatisticsToProto(req->name(), *found->layer, resp->add_model_stats());
  return guard.Finish(grpc::Status::OK);
}

grpc::Status KServeServiceImpl::RepositoryIndex(grpc::ServerContext* ctx, const inference::RepositoryIndexRequest* req,
                                                inference::RepositoryIndexResponse* resp) {
  rpc::CallGuard guard(ctx, service_, "RepositoryIndex");
  if (!guard.ok()) return guard.Finish(guard.auth_status());
  if (absl::Status s = CheckRepository(req->repository_name()); !s.ok()) return guard.Finish(rpc::ToGrpcStatus(s));
  std::vector<inference::RepositoryIndexResponse::ModelIndex> entries;
  std::set<std::string> loaded;
  for (const auto& model : engine_->registry().List()) {
    loaded.insert(model->name);
    for (const auto& [name, layer] : model->layers) {
      inference::RepositoryIndexResponse::ModelIndex& e = entries.emplace_back();
      e.set_name(LayerModelName(model->name, name));
      e.set_version(kVersion);
      e.set_state("READY");
    }
  }
  if (!req->ready()) {
    for (const std::string& dir : engine_->registry().Checkpoints()) {
      if (loaded.count(dir)) continue;
      inference::RepositoryIndexResponse::ModelIndex& e = entries.emplace_back();
      e.set_name(dir);
      e.set_state("UNAVAILABLE");
      e.set_reason("not loaded: RepositoryModelLoad loads it, and its layers become the models '<name>/<layer>'");
    }
  }
  std::sort(entries.begin(), entries.end(), [](const auto& a, const auto& b) { return a.name() < b.name(); });
  for (auto& e : entries) *resp->add_models() = std::move(e);
  return guard.Finish(grpc::Status::OK);
}

grpc::Status KServeServiceImpl::RepositoryModelLoad(grpc::ServerContext* ctx,
                                                    const inference::RepositoryModelLoadRequest* req,
                                                    inference::RepositoryModelLoadResponse*) {
  rpc::CallGuard guard(ctx, service_, "RepositoryModelLoad");
  if (!guard.ok()) return guard.Finish(guard.auth_status());
  if (absl::Status s = CheckRepository(req->repository_name()); !s.ok()) return guard.Finish(rpc::ToGrpcStatus(s));
  if (!req->parameters().empty()) {
    return guard.Finish(rpc::ToGrpcStatus(absl::InvalidArgumentError(
        absl::StrCat("parameter '", req->parameters().begin()->first,
                     "': lowbit-runtime loads a checkpoint directory as it is (no config or file overrides)"))));
  }
  const std::string& name = req->model_name();
  if (name.empty()) {
    return guard.Finish(rpc::ToGrpcStatus(
        absl::InvalidArgumentError("model_name is empty: name a checkpoint directory under the model root")));
  }
  if (auto loaded = engine_->registry().Get(name); loaded.ok()) {
    if ((*loaded)->source == name) return guard.Finish(grpc::Status::OK);  // already loaded from that directory
    return guard.Finish(rpc::ToGrpcStatus(
        absl::AlreadyExistsError(absl::StrCat("a model named '", name, "' is already loaded from ", (*loaded)->source,
                                              ", not from the directory '", name, "'; unload it first"))));
  }
  auto model = LoadForCall(*engine_, ctx, name, name, "RepositoryModelLoad");
  return guard.Finish(rpc::ToGrpcStatus(model.status()));
}

grpc::Status KServeServiceImpl::RepositoryModelUnload(grpc::ServerContext* ctx,
                                                      const inference::RepositoryModelUnloadRequest* req,
                                                      inference::RepositoryModelUnloadResponse*) {
  rpc::CallGuard guard(ctx, service_, "RepositoryModelUnload");
  if (!guard.ok()) return guard.Finish(guard.auth_status());
  if (absl::Status s = CheckRepository(req->repository_name()); !s.ok()) return guard.Finish(rpc::ToGrpcStatus(s));
  for (const auto& [key, value] : req->parameters()) {
    // Nothing depends on a model here, so "unload_dependents" has nothing to do either way.
    if (key == "unload_dependents" &&
        value.parameter_choice_case() == inference::ModelRepositoryParameter::kBoolParam) {
      continue;
    }
    return guard.Finish(rpc::ToGrpcStatus(absl::InvalidArgumentError(
        absl::StrCat("parameter '", key,
                     "': RepositoryModelUnload takes only 'unload_dependents' (a bool), which changes nothing "
                     "here"))));
  }
  return guard.Finish(rpc::ToGrpcStatus(engine_->Unload(req->model_name())));
}

grpc::Status KServeServiceImpl::ModelStreamInferRaw(grpc::ServerContext* ctx, rpc::RawServerStream* stream) {
  rpc::CallGuard guard(ctx, service_, "ModelStreamInfer");
  if (!guard.ok()) return guard.Finish(guard.auth_status());
  StreamEnd end = ServeConcurrently<inference::ModelInferRequest>(
      ctx, stream, options_.max_stream_inflight, "ModelStreamInfer",
      [this](const CallControl& control, inference::ModelInferRequest& req, grpc::ByteBuffer* bytes) {
        inference::ModelStreamInferResponse out;
        if (absl::Status s = Infer(control, req, out.mutable_infer_response()); !s.ok()) {
          out.set_error_message(absl::StrCat(absl::StatusCodeToString(s.code()), ": ", s.message()));
          inference::ModelInferResponse* r = out.mutable_infer_response();
          r->Clear();
          r->set_model_name(req.model_name());
          r->set_model_version(req.model_version());
          r->set_id(req.id());
        }
        return rpc::EncodeTo(out, bytes).ok();
      });
  if (end.cancelled) return guard.Finish(rpc::ToGrpcStatus(rpc::CallEnded(ctx, "ModelStreamInfer")));
  return guard.Finish(rpc::ToGrpcStatus(end.malformed));
}

absl::Status KServeServiceImpl::Infer(const CallControl& control, const inference::ModelInferRequest& req,
                                      inference::ModelInferResponse* resp) {
  absl::StatusOr<LayerModel> found = FindLayerModel(engine_->registry(), req.model_name(), req.model_version());
  if (!found.ok()) return found.status();
  for (const auto& out : req.outputs()) {
    if (out.name() != kOutput) {
      return absl::InvalidArgumentError(absl::StrCat("model '", req.model_name(), "' has no output '", out.name(),
                                                     "'; its one output is '", kOutput, "'"));
    }
    if (!out.parameters().empty()) return UnsupportedParameter("output 'y'", out.parameters().begin()->first);
  }
  for (const char* name : {"sequence_id", "sequence_start", "sequence_end"}) {
    if (req.parameters().count(name)) return UnsupportedParameter("the request", name);
  }
  GemmRequest gemm;
  gemm.model = found->model_name;
  gemm.layer = found->layer_name;
  if (auto it = req.parameters().find("out_dtype"); it != req.parameters().end()) {
    if (it->second.parameter_choice_case() != inference::InferParameter::kStringParam) {
      return absl::InvalidArgumentError("parameter 'out_dtype' must be a string: \"FP32\", \"FP16\" or \"BF16\"");
    }
    absl::StatusOr<DType> d = ActivationDTypeFromKServe(it->second.string_param(), "parameter 'out_dtype'");
    if (!d.ok()) return d.status();
    gemm.out_dtype = *d;
  }
  absl::StatusOr<Tensor> x = InputTensor(req);
  if (!x.ok()) return x.status();
  gemm.x = *std::move(x);
  Shape out_shape(req.inputs(0).shape().begin(), req.inputs(0).shape().end());
  // What the response echoes (id, model name, shape) and its other fields come off the limit.
  const int64_t echoed = static_cast<int64_t>(req.id().size() + req.model_name().size()) + 4096;
  gemm.max_result_bytes = std::max<int64_t>(1, options_.max_message_bytes - echoed);
  absl::StatusOr<GemmResult> y = engine_->Gemm(gemm, control);
  if (!y.ok()) return y.status();
  out_shape.back() = y->y.dim(1);
  resp->set_model_name(req.model_name());
  resp->set_model_version(kVersion);
  resp->set_id(req.id());
  inference::ModelInferResponse::InferOutputTensor* out = resp->add_outputs();
  out->set_name(kOutput);
  out->set_datatype(KServeDatatype(y->y.dtype()));
  out->mutable_shape()->Assign(out_shape.begin(), out_shape.end());
  std::span<const uint8_t> b = y->y.bytes();
  resp->add_raw_output_contents(reinterpret_cast<const char*>(b.data()), b.size());
  (*resp->mutable_parameters())["kernel_us"].set_double_param(y->kernel_us());
  (*resp->mutable_parameters())["batch_requests"].set_int64_param(y->batch_requests);
  if (const size_t size = resp->ByteSizeLong(); static_cast<int64_t>(size) > options_.max_message_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat("the response is ", size, " bytes (its id ", req.id().size(),
                                                     "), over the server's ", options_.max_message_bytes,
                                                     "-byte message limit"));
  }
  return absl::OkStatus();
}

}  // namespace lowbit::runtime
