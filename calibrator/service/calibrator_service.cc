#include "calibrator/service/calibrator_service.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "calibrator/compute.h"
#include "calibrator/gptq.h"
#include "calibrator/job_builder.h"
#include "common/checkpoint.h"
#include "common/file_util.h"
#include "common/module_match.h"
#include "common/safetensors.h"
#include "nlohmann/json.hpp"
#include "rpc/client.h"
#include "rpc/crc32c.h"
#include "rpc/raw_stream.h"
#include "rpc/status.h"
#include "rpc/tensor_codec.h"

namespace lowbit::calibrator {

namespace {

using Clock = std::chrono::steady_clock;

grpc::Status Edge(const absl::Status& s) { return rpc::ToGrpcStatus(s); }

constexpr std::string_view kLinearClasses[] = {"Linear", "Module"};

// QuantizeLayer's block_size bound: GPTQ processes min(block_size, K) columns at a time, so
// larger values act as K; the bound only keeps nonsense out.
constexpr int32_t kMaxBlockSize = 65536;

// InvalidArgument naming the first NaN or infinity of the row-major [*, cols] `values`.
absl::Status CheckFinite(const std::vector<float>& values, int64_t cols, const char* what) {
  for (size_t i = 0; i < values.size(); ++i) {
    if (std::isfinite(values[i])) continue;
    const int64_t row = static_cast<int64_t>(i) / cols, col = static_cast<int64_t>(i) % cols;
    return absl::InvalidArgumentError(absl::StrCat(what, "[", row, ", ", col, "] (element ", i, ") is ", values[i],
                                                   "; QuantizeLayer needs finite values"));
  }
  return absl::OkStatus();
}

// The config group scheme that quantizes Linear `name` under the request's scheme or recipe,
// with GPTQ's settings.
struct LayerPlan {
  QuantScheme scheme;
  int block_size = 128;
  double dampening_frac = 0.01;
};

absl::StatusOr<LayerPlan> PlanFor(const v1::QuantizeLayerRequest& req, bool gptq) {
  absl::StatusOr<RecipeChoice> choice;
  if (req.recipe_case() == v1::QuantizeLayerRequest::kScheme) {
    choice = ResolveRecipe("", "scheme", req.scheme(), gptq ? "gptq" : "rtn");
  } else if (req.recipe_case() == v1::QuantizeLayerRequest::kRecipeYaml) {
    choice = ResolveRecipe(req.recipe_yaml(), "recipe_yaml", "", "");
  } else {
    return absl::InvalidArgumentError("QuantizeLayer needs a scheme or a recipe_yaml");
  }
  if (!choice.ok()) return choice.status();
  if (!choice->plan.quantization || choice->plan.quantization->config_groups.empty()) {
    return absl::InvalidArgumentError("the recipe has no quantization config group");
  }
  const QuantizationPlan& q = *choice->plan.quantization;
  LayerPlan plan;
  plan.block_size = q.block_size;
  plan.dampening_frac = q.dampening_frac;
  if (req.recipe_case() == v1::QuantizeLayerRequest::kScheme) {
    plan.scheme = q.config_groups.begin()->second;
    return plan;
  }
  absl::StatusOr<SchemeResolver> resolver = SchemeResolver::Create(q.config_groups, q.ignore);
  if (!resolver.ok()) return resolver.status();
  std::optional<std::string> group = resolver->Resolve(req.name(), kLinearClasses);
  if (!group) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the recipe's targets (minus its ignore list) match no module named '", req.name(), "': nothing to quantize"));
  }
  plan.scheme = q.config_groups.at(*group);
  return plan;
}

}  // namespace

absl::StatusOr<v1::QuantizeLayerResponse> QuantizeLayerImpl(const v1::QuantizeLayerRequest& req) {
  auto t0 = Clock::now();
  const std::string name = req.name().empty() ? std::string("layer") : req.name();
  if (!req.has_weight()) {
    return absl::InvalidArgumentError(
        "weight is missing: QuantizeLayer needs the Linear's weight [N, K] (F32, F16 or BF16)");
  }
  absl::StatusOr<Tensor> weight = rpc::TensorFromProto(req.weight(), "weight");
  if (!weight.ok()) return weight.status();
  if (weight->shape().size() != 2) {
    return absl::InvalidArgumentError(absl::StrCat("weight must be 2-D [N, K], got rank ", weight->shape().size()));
  }
  if (weight->dtype() != DType::kF32 && weight->dtype() != DType::kF16 && weight->dtype() != DType::kBF16) {
    return absl::InvalidArgumentError(
        absl::StrCat("weight must be F32, F16 or BF16, not ", std::string(DTypeName(weight->dtype()))));
  }
  const int64_t n = weight->dim(0), k = weight->dim(1);
  if (n == 0 || k == 0) return absl::InvalidArgumentError("weight has an empty dimension");
  // The options first (cheap), then the values.
  if (!std::isfinite(req.dampening_frac()) || req.dampening_frac() < 0 || req.dampening_frac() > 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("dampening_frac must be a finite number in [0, 1] (0 = the recipe's, ", "0.01 for a scheme), got ",
                     req.dampening_frac()));
  }
  if (req.block_size() < 0 || req.block_size() > kMaxBlockSize) {
    return absl::InvalidArgumentError(absl::StrCat("block_size must be in [0, ", kMaxBlockSize,
                                                   "] (0 = the recipe's, 128 for a scheme), got ", req.block_size()));
  }
  std::vector<float> w = weight->ToFloats();
  if (absl::Status s = CheckFinite(w, k, "weight"); !s.ok()) return s;
  const bool gptq = req.has_hessian();
  absl::StatusOr<LayerPlan> plan = PlanFor(req, gptq);
  if (!plan.ok()) return plan.status();
  if (!plan->scheme.weights) {
    return absl::InvalidArgumentError("the scheme quantizes no weights; QuantizeLayer needs weight quantization");
  }
  QuantArgs args = *plan->scheme.weights;
  if (!req.actorder().empty()) {
    std::optional<ActOrder> a = ParseActOrder(req.actorder());
    if (!a) return absl::InvalidArgumentError(absl::StrCat("unknown actorder '", req.actorder(), "'"));
    args.actorder = *a;
    args.actorder_spelling = req.actorder();
  }
  const DType scale_dtype = ScaleDTypeFor(weight->dtype());

  v1::QuantizeLayerResponse resp;
  QuantizedLinear q;
  if (gptq) {
    absl::StatusOr<Tensor> h = rpc::TensorFromProto(req.hessian(), "hessian");
    if (!h.ok()) return h.status();
    if (h->dtype() != DType::kF32 || h->shape() != Shape{k, k}) {
      return absl::InvalidArgumentError(absl::StrCat("hessian must be F32 [", k, ", ", k, "] (K of the weight)"));
    }
    std::vector<float> hessian = h->ToFloats();
    if (absl::Status s = CheckFinite(hessian, k, "hessian"); !s.ok()) return s;
    GptqOptions opts;
    opts.block_size = req.block_size() > 0 ? req.block_size() : plan->block_size;
    opts.dampening_frac = req.dampening_frac() > 0 ? req.dampening_frac() : plan->dampening_frac;
    absl::StatusOr<GptqResult> g = QuantizeLinearGptq(name, w, n, k, hessian, args, scale_dtype, opts, CpuCompute());
    if (!g.ok()) return g.status();
    resp.set_algorithm("GPTQ");
    resp.set_loss(g->loss);
    resp.set_fell_back_to_rtn(g->fell_back_to_rtn);
    resp.set_warning(g->warning);
    q = std::move(g->quantized);
  } else {
    absl::StatusOr<QuantizedLinear> r = QuantizeLinearRtn(name, *weight, args, scale_dtype);
    if (!r.ok()) return r.status();
    resp.set_algorithm("RTN");
    q = *std::move(r);
  }
  absl::StatusOr<std::vector<NamedTensor>> encoded =
      EncodeLinear(q, plan->scheme.format.value_or(InferFormat(plan->scheme)), scale_dtype);
  if (!encoded.ok()) return encoded.status();
  const std::string prefix = name + ".";
  for (const NamedTensor& t : *encoded) {
    v1::NamedTensor* out = resp.add_tensors();
    out->set_name(absl::StartsWith(t.name, prefix) ? t.name.substr(prefix.size()) : t.name);
    rpc::TensorToProto(t.tensor, out->mutable_tensor());
  }
  resp.set_seconds(std::chrono::duration<double>(Clock::now() - t0).count());
  return resp;
}

CalibratorServiceImpl::CalibratorServiceImpl(const rpc::ServiceContext& context, JobRunner* runner,
                                             const UploadStore* uploads, ServicePaths paths)
    : context_(context), runner_(runner), uploads_(uploads), paths_(std::move(paths)) {
  MarkMethodStreamed(rpc::MethodIndex(rpc::kUploadModelPath),
                     rpc::RawHandler(this, &CalibratorServiceImpl::UploadModelRaw));
  MarkMethodStreamed(rpc::MethodIndex(rpc::kFetchResultPath),
                     rpc::RawHandler(this, &CalibratorServiceImpl::FetchResultRaw));
  if (context_.registry) {
    auto& family = prometheus::BuildCounter()
                       .Name("lowbit_calibrator_upload_bytes_total")
                       .Help("Bytes received by UploadDataset / UploadModel")
                       .Register(*context_.registry);
    dataset_bytes_ = &family.Add({{"kind", "dataset"}});
    model_bytes_ = &family.Add({{"kind", "model"}});
  }
}

grpc::Status CalibratorServiceImpl::CreateJob(grpc::ServerContext* ctx, const v1::CreateJobRequest* req,
                                              v1::CreateJobResponse* resp) {
  rpc::CallGuard guard(ctx, context_, "CreateJob");
  if (!guard.ok()) return guard.Finish(guard.auth_status());
  absl::StatusOr<v1::Job> job = runner_->Create(req->spec());
  if (!job.ok()) return guard.Finish(Edge(job.status()));
  *resp->mutable_job() = *std::move(job);
  return guard.Finish(grpc::Status::OK);
}

grpc::Status CalibratorServiceImpl::GetJob(grpc::ServerContext* ctx, const v1::GetJobRequest* req,
                                           v1::GetJobResponse* resp) {
  rpc::CallGuard guard(ctx, context_, "GetJob");
  if (!guard.ok()) return guard.Finish(guard.auth_status());
  absl::StatusOr<v1::Job> job = runner_->Get(req->id());
  if (!job.ok()) return guard.Finish(Edge(job.status()));
  *resp->mutable_job() = *std::move(job);
  return guard.Finish(grpc::Status::OK);
}

grpc::Status CalibratorServiceImpl::ListJobs(grpc::ServerContext* ctx, const v1::ListJobsRequest* req,
                                             v1::ListJobsResponse* resp) {
  rpc::CallGuard guard(ctx, context_, "ListJobs");
  if (!guard.ok()) return guard.Finish(guard.auth_status());
  if (!v1::JobState_IsValid(req->state())) {
    return guard.Finish(Edge(absl::InvalidArgumentError(absl::StrCat("unknown job state ", req->state()))));
  }
  for (v1::Job& j : runner_->List(req->state())) *resp->add_jobs() = std::move(j);
  return guard.Finish(grpc::Status::OK);
}

grpc::Status CalibratorServiceImpl::CancelJob(grpc::ServerContext* ctx, const v1::CancelJobRequest* req,
                                              v1::CancelJobResponse* resp) {
  rpc::CallGuard guard(ctx, context_, "CancelJob");
  if (!guard.ok()) return guard.Finish(guard.auth_status());
  absl::StatusOr<v1::Job> job = runner_->Cancel(req->id());
  if (!job.ok()) return guard.Finish(Edge(job.status()));
  *resp->mutable_job() = *std::move(job);
  return guard.Finish(grpc::Status::OK);
}

grpc::Status CalibratorServiceImpl::RetryJob(grpc::ServerContext* ctx, const v1::RetryJobRequest* req,
                                             v1::RetryJobResponse* resp) {
  rpc::CallGuard guard(ctx, context_, "RetryJob");
  if (!guard.ok()) return guard.Finish(guard.auth_status());
  absl::StatusOr<v1::Job> job = runner_->Retry(req->id());
  if (!job.ok()) return guard.Finish(Edge(job.status()));
  *resp->mutable_job() = *std::move(job);
  return guard.Finish(grpc::Status::OK);
}

grpc::Status CalibratorServiceImpl::DeleteJob(grpc::ServerContext* ctx, const v1::DeleteJobRequest* req,
                                              v1::DeleteJobResponse* resp) {
  rpc::CallGuard guard(ctx, context_, "DeleteJob");
  if (!guard.ok()) return guard.Finish(guard.auth_status());
  absl::StatusOr<JobRunner::Deleted> deleted = runner_->Delete(req->id(), req->keep_output());
  if (!deleted.ok()) return guard.Finish(Edge(deleted.status()));
  *resp->mutable_job() = std::move(deleted->job);
  resp->set_freed_bytes(deleted->freed_bytes);
  return guard.Finish(grpc::Status::OK);
}

namespace {

void UploadToProto(const UploadStore::Entry& e, const std::vector<std::string>& used_by, v1::Upload* out) {
  out->set_kind(e.kind);
  out->set_name(e.name);
  out->set_bytes(e.bytes);
  out->set_modified_unix_ms(e.modified_unix_ms);
  for (const std::string& id : used_by) out->add_used_by(id);
}

}  // namespace

grpc::Status CalibratorServiceImpl::ListUploads(grpc::ServerContext* ctx, const v1::ListUploadsRequest* req,
                                                v1::ListUploadsResponse* resp) {
  rpc::CallGuard guard(ctx, context_, "ListUploads");
  if (!guard.ok()) return guard.Finish(guard.auth_status());
  for (const UploadStore::Entry& e : uploads_->List()) {
    UploadToProto(e, runner_->UnfinishedUsers(e.kind, e.name), resp->add_uploads());
  }
  return guard.Finish(grpc::Status::OK);
}

grpc::Status CalibratorServiceImpl::DeleteUpload(grpc::ServerContext* ctx, const v1::DeleteUploadRequest* req,
                                                 v1::DeleteUploadResponse* resp) {
  rpc::CallGuard guard(ctx, context_, "DeleteUpload");
  if (!guard.ok()) return guard.Finish(guard.auth_status());
  absl::StatusOr<UploadStore::Entry> removed = runner_->RemoveUpload(req->kind(), req->name());
  if (!removed.ok()) return guard.Finish(Edge(removed.status()));
  UploadToProto(*removed, {}, resp->mutable_upload());
  resp->set_freed_bytes(removed->bytes);
  return guard.Finish(grpc::Status::OK);
}

grpc::Status CalibratorServiceImpl::WatchJob(grpc::ServerContext* ctx, const v1::WatchJobRequest* req,
                                             grpc::ServerWriter<v1::WatchJobResponse>* writer) {
  rpc::CallGuard guard(ctx, context_, "WatchJob");
  if (!guard.ok()) return guard.Finish(guard.auth_status());
  uint64_t seen = 0;
  for (bool first = true;; first = false) {
    if (ctx->IsCancelled()) {
      return guard.Finish(Edge(rpc::CallEnded(ctx, "WatchJob")));
    }
    if (stopping_) return guard.Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the calibrator is shutting down"));
    absl::StatusOr<JobRunner::Snapshot> snap =
        runner_->Wait(req->id(), seen, first ? std::chrono::milliseconds(0) : std::chrono::milliseconds(200));
    if (!snap.ok()) return guard.Finish(Edge(snap.status()));
    if (!first && snap->version == seen) continue;
    seen = snap->version;
    v1::WatchJobResponse msg;
    *msg.mutable_job() = snap->job;
    if (!writer->Write(msg)) return guard.Finish(Edge(rpc::CallEnded(ctx, "WatchJob")));
    if (JobRunner::Terminal(snap->job.state())) return guard.Finish(grpc::Status::OK);
  }
}

// Feeds a client stream into an upload (dataset or model), counting bytes into `counter`, and
// finishes it: the upload appears only when the stream ended cleanly and every check passed.
// `add_next(upload, &status)` reads the next message into the upload: false at the end of the
// stream, else true with the message's status.
template <class Upload, class Response, class AddNext>
absl::StatusOr<Response> ReceiveUpload(grpc::ServerContext* ctx, AddNext add_next,
                                       absl::StatusOr<std::unique_ptr<Upload>> up, prometheus::Counter* counter) {
  if (!up.ok()) return up.status();
  int64_t before = 0;
  absl::Status s;
  while (add_next(**up, &s)) {
    if (counter != nullptr) counter->Increment(static_cast<double>((*up)->bytes() - before));
    before = (*up)->bytes();
    if (!s.ok()) return s;
  }
  if (ctx->IsCancelled()) return rpc::CallEnded(ctx, "the upload");
  return (*up)->Finish();
}

grpc::Status CalibratorServiceImpl::UploadDataset(grpc::ServerContext* ctx,
                                                  grpc::ServerReader<v1::UploadDatasetRequest>* reader,
                                                  v1::UploadDatasetResponse* resp) {
  rpc::CallGuard guard(ctx, context_, "UploadDataset");
  if (!guard.ok()) return guard.Finish(guard.auth_status());
  v1::UploadDatasetRequest msg;
  auto add_next = [&](UploadStore::DatasetUpload& up, absl::Status* s) {
    if (!reader->Read(&msg)) return false;
    *s = up.Add(msg);
    return true;
  };
  absl::StatusOr<v1::UploadDatasetResponse> done = ReceiveUpload<UploadStore::DatasetUpload, v1::UploadDatasetResponse>(
      ctx, add_next, uploads_->BeginDataset(), dataset_bytes_);
  if (!done.ok()) return guard.Finish(Edge(done.status()));
  *resp = *std::move(done);
  return guard.Finish(grpc::Status::OK);
}

grpc::Status CalibratorServiceImpl::UploadModelRaw(grpc::ServerContext* ctx, rpc::RawServerStream* stream) {
  rpc::CallGuard guard(ctx, context_, "UploadModel");
  if (!guard.ok()) return guard.Finish(guard.auth_status());
  grpc::ByteBuffer raw;
  v1::UploadModelRequest msg;
  rpc::SplitMessage split;  // reused: its slices are released when the next message arrives
  auto add_next = [&](UploadStore::ModelUpload& up, absl::Status* s) {
    if (!stream->Read(&raw)) return false;
    *s = rpc::DecodeWithBulk(raw, rpc::kUploadModelData, &msg, &split);
    if (s->ok()) *s = up.Add(msg, split.data);
    return true;
  };
  absl::StatusOr<v1::UploadModelResponse> done = ReceiveUpload<UploadStore::ModelUpload, v1::UploadModelResponse>(
      ctx, add_next, uploads_->BeginModel(), model_bytes_);
  if (!done.ok()) return guard.Finish(Edge(done.status()));
  if (!stream->Write(rpc::Encode(*done))) return guard.Finish(Edge(rpc::CallEnded(ctx, "UploadModel")));
  return guard.Finish(grpc::Status::OK);
}

grpc::Status CalibratorServiceImpl::FetchResultRaw(grpc::ServerContext* ctx, rpc::RawServerStream* stream) {
  rpc::CallGuard guard(ctx, context_, "FetchResult");
  if (!guard.ok()) return guard.Finish(guard.auth_status());
  grpc::ByteBuffer raw;
  v1::FetchResultRequest req;
  if (!stream->Read(&raw)) {
    return guard.Finish(Edge(absl::InvalidArgumentError("FetchResult: the stream ended before the request")));
  }
  if (absl::Status s = rpc::Decode(raw, &req); !s.ok()) {
    return guard.Finish(Edge(absl::InvalidArgumentError(absl::StrCat("FetchResult request: ", s.message()))));
  }
  return guard.Finish(Edge(SendResult(ctx, req, stream)));
}

namespace {

// A file of the checkpoint sent apart from the tensors and the header's three texts.
struct SideFile {
  std::string name;
  std::string bytes;
};

// The checkpoint's other files: every regular file directly in `dir` but the tensor files, the
// index and the header's config.json / report.json / recipe.yaml — what WriteCheckpoint copied
// through from the source model (tokenizer files, generation_config.json, chat templates...).
absl::StatusOr<std::vector<SideFile>> ReadSideFiles(const std::string& dir) {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    std::error_code ec2;
    if (!entry.is_regular_file(ec2) || entry.is_symlink(ec2)) continue;
    if (absl::EndsWith(name, ".safetensors") || name == "model.safetensors.index.json" || name == "config.json" ||
        name == "report.json" || name == "recipe.yaml") {
      continue;
    }
    names.push_back(name);
  }
  if (ec) return absl::DataLossError(absl::StrCat("the checkpoint's files cannot be listed: ", ec.message()));
  std::sort(names.begin(), names.end());
  std::vector<SideFile> files;
  for (const std::string& name : names) {
    std::error_code size_ec;
    const uintmax_t size = std::filesystem::file_size(absl::StrCat(dir, "/", name), size_ec);
    if (!size_ec && size > static_cast<uintmax_t>(rpc::kMaxResultFileBytes)) {
      return absl::FailedPreconditionError(absl::StrCat("file '", name, "' of the checkpoint is ", size,
                                                        " bytes, over the ", rpc::kMaxResultFileBytes,
                                                        " a fetched side file may have; copy it from the server"));
    }
    absl::StatusOr<std::string> bytes = ReadFileToString(absl::StrCat(dir, "/", name));
    if (!bytes.ok()) return absl::DataLossError(absl::StrCat("file '", name, "' of the checkpoint cannot be read"));
    files.push_back({name, *std::move(bytes)});
  }
  return files;
}

// DataLoss unless `dir`'s report.json is `job`'s report: the output is that job's checkpoint,
// not one that replaced it (a server before the output-name checks let a later job with the
// same output_name overwrite it).
absl::Status CheckOwnCheckpoint(const v1::Job& job, const std::string& dir) {
  if (job.report_json().empty()) return absl::OkStatus();
  const nlohmann::json want = nlohmann::json::parse(job.report_json(), nullptr, /*allow_exceptions=*/false);
  if (want.is_discarded()) return absl::OkStatus();
  absl::StatusOr<std::string> text = ReadFileToString(dir + "/report.json");
  const nlohmann::json have =
      text.ok() ? nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false) : nlohmann::json();
  if (text.ok() && !have.is_discarded() && have == want) return absl::OkStatus();
  return absl::DataLossError(absl::StrCat("output '", job.output_path(), "' no longer holds the checkpoint of job ",
                                          job.id(),
                                          ": its report.json is not this job's (the directory was "
                                          "replaced, by hand or by another job with the same output_name on an "
                                          "older server)"));
}

// The header (config.json, report.json, recipe.yaml, tensor count and bytes, the other files)
// of a result.
absl::StatusOr<v1::FetchResultResponse> ResultHeader(const v1::Job& job, const std::string& dir,
                                                     const SafetensorsModel& model,
                                                     const std::vector<SideFile>& side_files) {
  v1::FetchResultResponse header;
  v1::ResultHeader* h = header.mutable_header();
  h->set_job_id(job.id());
  absl::StatusOr<std::string> config = ReadFileToString(dir + "/config.json");
  if (!config.ok()) return config.status();
  h->set_config_json(*config);
  if (absl::StatusOr<std::string> r = ReadFileToString(dir + "/report.json"); r.ok()) h->set_report_json(*r);
  if (absl::StatusOr<std::string> r = ReadFileToString(dir + "/recipe.yaml"); r.ok()) h->set_recipe_yaml(*r);
  const std::vector<std::string> names = model.names();
  int64_t total = 0;
  for (const std::string& n : names) {
    const SafetensorsEntry* e = model.Find(n);
    total += static_cast<int64_t>(e->end - e->begin);
  }
  rpc::AddModelManifest(model, rpc::TensorOrder::kByFile, h->mutable_manifest());
  h->set_tensors(static_cast<int32_t>(names.size()));
  h->set_tensor_bytes(total);
  for (const SideFile& f : side_files) {
    v1::ResultFileInfo* info = h->add_files();
    info->set_name(f.name);
    info->set_size(static_cast<int64_t>(f.bytes.size()));
  }
  return header;
}

// Sends `f` as ResultFileChunk messages of at most `chunk` bytes. False when the client went away.
bool WriteSideFile(const SideFile& f, int64_t chunk, rpc::RawServerStream* stream) {
  size_t off = 0;
  uint32_t crc = 0;
  do {
    const size_t n = std::min<size_t>(static_cast<size_t>(chunk), f.bytes.size() - off);
    v1::FetchResultResponse msg;
    v1::ResultFileChunk* c = msg.mutable_file();
    c->set_name(f.name);
    c->set_offset(static_cast<int64_t>(off));
    c->set_data(f.bytes.data() + off, n);
    crc = rpc::Crc32c(f.bytes.data() + off, n, crc);
    off += n;
    if (off == f.bytes.size()) {
      c->set_last(true);
      c->set_crc32c(crc);
    }
    if (!stream->Write(rpc::Encode(msg))) return false;
  } while (off < f.bytes.size());
  return true;
}

}  // namespace

absl::Status CalibratorServiceImpl::SendResult(const grpc::ServerContext* ctx, const v1::FetchResultRequest& req,
                                               rpc::RawServerStream* stream) {
  absl::StatusOr<v1::Job> job = runner_->Get(req.id());
  if (!job.ok()) return job.status();
  if (job->state() != v1::JOB_STATE_SUCCEEDED) {
    return absl::FailedPreconditionError(absl::StrCat("job ", job->id(), " is ", v1::JobState_Name(job->state()),
                                                      "; FetchResult needs a job in JOB_STATE_SUCCEEDED"));
  }
  if (req.chunk_bytes() < 0) return absl::InvalidArgumentError("chunk_bytes is negative");
  const int64_t chunk = req.chunk_bytes() == 0 ? int64_t{1} << 20 : std::min(req.chunk_bytes(), rpc::kMaxChunkBytes);
  const std::string dir = absl::StrCat(paths_.output_root, "/", job->output_path());
  // The checkpoint's files are opened (mapped) here; a DeleteJob from then on does not disturb the
  // stream. One that came first shows as a read failure: asked again, it is the job that is gone.
  auto unless_deleted = [&](const absl::Status& s) {
    if (!runner_->Get(req.id()).ok()) return absl::NotFoundError(absl::StrCat("job ", req.id(), " was deleted"));
    return s;
  };
  absl::StatusOr<std::unique_ptr<SafetensorsModel>> model = SafetensorsModel::Open(dir);
  if (!model.ok()) {
    return unless_deleted(absl::DataLossError(
        absl::StrCat("the checkpoint of job ", job->id(), " cannot be read: ", model.status().message())));
  }
  if (absl::Status s = CheckOwnCheckpoint(*job, dir); !s.ok()) return unless_deleted(s);
  absl::StatusOr<std::vector<SideFile>> side_files = ReadSideFiles(dir);
  if (!side_files.ok()) return unless_deleted(side_files.status());
  absl::StatusOr<v1::FetchResultResponse> header = ResultHeader(*job, dir, **model, *side_files);
  if (!header.ok()) return unless_deleted(header.status());
  if (!stream->Write(rpc::Encode(*header))) return rpc::CallEnded(ctx, "FetchResult");
  for (const SideFile& f : *side_files) {
    if (!WriteSideFile(f, chunk, stream)) return rpc::CallEnded(ctx, "FetchResult");
  }
  // kByFile: the client writes each file front to back (O_DIRECT). Write fails once cancelled.
  absl::StatusOr<bool> sent = rpc::WriteModelChunks(**model, rpc::TensorOrder::kByFile, chunk,
                                                    [&](const grpc::ByteBuffer& m) { return stream->Write(m); });
  if (!sent.ok()) return sent.status();
  return *sent ? absl::OkStatus() : rpc::CallEnded(ctx, "FetchResult");
}

grpc::Status CalibratorServiceImpl::QuantizeLayer(grpc::ServerContext* ctx, const v1::QuantizeLayerRequest* req,
                                                  v1::QuantizeLayerResponse* resp) {
  rpc::CallGuard guard(ctx, context_, "QuantizeLayer");
  if (!guard.ok()) return guard.Finish(guard.auth_status());
  absl::StatusOr<v1::QuantizeLayerResponse> r = QuantizeLayerImpl(*req);
  if (!r.ok()) return guard.Finish(Edge(r.status()));
  *resp = *std::move(r);
  return guard.Finish(grpc::Status::OK);
}

}  // namespace lowbit::calibrator
