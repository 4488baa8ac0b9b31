#include "runtime/service/runtime_service.h"

#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"
#include "rpc/status.h"
#include "rpc/tensor_codec.h"
#include "runtime/service/concurrent_stream.h"
#include "runtime/service/grpc_call_control.h"

namespace lowbit::runtime {
namespace {

constexpr char kGemmPath[] = "/lowbit.v1.RuntimeService/Gemm";
constexpr char kGemmStreamPath[] = "/lowbit.v1.RuntimeService/GemmStream";

}  // namespace

RuntimeServiceImpl::RuntimeServiceImpl(Engine* engine, rpc::ServiceContext service, RuntimeServiceOptions options)
    : engine_(engine), service_(std::move(service)), options_(options) {
  MarkMethodStreamed(rpc::MethodIndex(rpc::kLoadModelStreamPath),
                     rpc::RawHandler(this, &RuntimeServiceImpl::LoadModelStreamRaw));
  MarkMethodStreamed(rpc::MethodIndex(kGemmStreamPath), rpc::RawHandler(this, &RuntimeServiceImpl::GemmStreamRaw));
  MarkMethodStreamed(rpc::MethodIndex(kGemmPath), rpc::RawHandler(this, &RuntimeServiceImpl::GemmRaw));
}

void ModelInfoToProto(const LoadedModel& model, const std::string& backend, v1::ModelInfo* out) {
  out->set_name(model.name);
  out->set_source(model.source);
  out->set_weight_bytes(model.bytes);
  out->set_backend(backend);
  for (const auto& [name, l] : model.layers) {
    v1::LayerInfo* li = out->add_layers();
    li->set_name(name);
    li->set_scheme(l->scheme);
    li->set_n(l->n);
    li->set_k(l->k);
    li->set_activations(l->activations);
    li->set_group_size(l->kind == LinearKind::kW4A16 ? l->group_size : 0);
    li->set_has_bias(l->has_bias);
    li->set_weight_bytes(l->bytes);
  }
}

grpc::Status RuntimeServiceImpl::LoadModel(grpc::ServerContext* ctx, const v1::LoadModelRequest* req,
                                           v1::LoadModelResponse* resp) {
  rpc::CallGuard guard(ctx, service_, "LoadModel");
  if (!guard.ok()) return guard.Finish(guard.auth_status());
  auto model = LoadForCall(*engine_, ctx, req->name(), req->path(), "LoadModel");
  if (!model.ok()) return guard.Finish(rpc::ToGrpcStatus(model.status()));
  ModelInfoToProto(**model, engine_->Info().backend, resp->mutable_model());
  return guard.Finish(grpc::Status::OK);
}

absl::StatusOr<std::shared_ptr<const LoadedModel>> LoadForCall(Engine& engine, grpc::ServerContext* ctx,
                                                               const std::string& name, const std::string& path,
                                                               const char* method) {
  // Asked between layers: a client whose deadline passed or that cancelled leaves nothing loaded.
  auto model = engine.LoadFromPath(name, path, ControlOf(ctx));
  if (!model.ok()) return model.status();
  if (!ctx->IsCancelled()) return model;
  auto now = engine.registry().Get(name);
  if (now.ok() && now->get() == model->get()) engine.Unload(name).IgnoreError();
  const absl::Status ended = rpc::CallEnded(ctx, method);
  return absl::Status(ended.code(), absl::StrCat(ended.message(), " while model '", name,
                                                 "' was being published; it was unloaded again"));
}

grpc::Status RuntimeServiceImpl::LoadModelStreamRaw(grpc::ServerContext* ctx, rpc::RawServerStream* stream) {
  rpc::CallGuard guard(ctx, service_, "LoadModelStream");
  if (!guard.ok()) return guard.Finish(guard.auth_status());
  absl::StatusOr<v1::LoadModelStreamResponse> resp = ReceiveModel(ctx, stream);
  if (!resp.ok()) return guard.Finish(rpc::ToGrpcStatus(resp.status()));
  if (!stream->Write(rpc::Encode(*resp))) {
    return guard.Finish(rpc::ToGrpcStatus(rpc::CallEnded(ctx, "LoadModelStream")));
  }
  return guard.Finish(grpc::Status::OK);
}

absl::StatusOr<v1::LoadModelStreamResponse> RuntimeServiceImpl::ReceiveModel(grpc::ServerContext* ctx,
                                                                             rpc::RawServerStream* stream) {
  grpc::ByteBuffer raw;
  v1::LoadModelStreamRequest msg;
  rpc::SplitMessage split;  // reused: its slices are released when the next message arrives
  auto next = [&](absl::Status* s) {
    if (!stream->Read(&raw)) return false;
    *s = rpc::DecodeWithBulk(raw, rpc::kLoadChunkData, &msg, &split);
    return true;
  };
  absl::Status st;
  if (!next(&st)) return absl::InvalidArgumentError("empty stream: the first message must be a header");
  if (!st.ok()) return st;
  if (!msg.has_header()) {
    return absl::InvalidArgumentError("the first message must be a header (name and config_json), got a chunk");
  }
  const std::string name = msg.header().name();
  const std::string config = msg.header().config_json();
  if (absl::Status s = engine_->registry().CheckName(name); !s.ok()) return s;
  // A size that is invalid whatever the budget (negative, overflowing, over
  // TensorLimits::max_bytes) is INVALID_ARGUMENT. With a manifest, each quantized Linear is
  // prepared as soon as its tensors arrived (ModelRegistry::StreamedLoad), which asks the memory
  // budget up front for the Linears' bytes, as a path load does; without one, the whole
  // checkpoint is assembled in memory first, so every streamed byte is bounded by what the budget
  // has left (RESOURCE_EXHAUSTED naming the budget).
  rpc::TensorLimits limits;
  absl::StatusOr<rpc::Manifest> manifest = rpc::Manifest::FromProto(msg.header().manifest(), limits);
  if (!manifest.ok()) return manifest.status();
  const int64_t left = engine_->registry().bytes_left();
  if (manifest->entries().empty()) limits.budget_bytes = left;
  auto over_budget = [&](const absl::Status& s) {
    if (s.code() != absl::StatusCode::kResourceExhausted || limits.budget_bytes >= limits.max_bytes) return s;
    return absl::ResourceExhaustedError(absl::StrCat(s.message(), ": the memory budget (--memory_budget_bytes ",
                                                     engine_->registry().budget_bytes(), ") has ", left,
                                                     " bytes left for new models; unload a model or raise it"));
  };
  std::unique_ptr<ModelRegistry::StreamedLoad> streamed;
  rpc::ChunkAssembler::Hooks hooks;
  // With --state_dir the checkpoint is also written to disk as it arrives, so that the model
  // can be loaded again after a restart.
  std::vector<SafetensorsModelWriter::Placement> placements;
  for (const rpc::Manifest::Entry& e : manifest->entries()) {
    placements.push_back({e.name, e.dtype, e.shape, StreamedCopy::kTensorFile});
  }
  absl::StatusOr<std::unique_ptr<StreamedCopy>> copy = engine_->BeginStreamedCopy(config, placements);
  if (!copy.ok()) return copy.status();
  if (!manifest->entries().empty()) {
    std::vector<std::pair<std::string, int64_t>> announced;
    for (const rpc::Manifest::Entry& e : manifest->entries()) announced.emplace_back(e.name, e.bytes);
    auto begun = engine_->registry().BeginStreamedLoad(name, config, announced);
    if (!begun.ok()) return begun.status();
    streamed = *std::move(begun);
    hooks.check = [&](const std::string& n, DType dtype, const Shape& shape) {
      return manifest->Check(n, dtype, shape);
    };
    hooks.take = [&](const std::string& n, Tensor t) {
      if (*copy != nullptr) {
        if (absl::Status s = (*copy)->Add(n, t); !s.ok()) return s;
      }
      return streamed->Add(n, std::move(t));
    };
    // A tensor no quantized Linear reads (embeddings, lm_head, norms) is never assembled: its
    // chunks go straight to the state directory's copy, or nowhere.
    hooks.hold = [&](const std::string& n) { return streamed->Reads(n); };
    hooks.pass = [&](const std::string& n, int64_t offset, const rpc::DataPieces& data) {
      if (*copy == nullptr) return absl::OkStatus();
      for (std::span<const uint8_t> piece : data.pieces) {
        if (absl::Status s = (*copy)->Write(n, static_cast<uint64_t>(offset), piece); !s.ok()) return s;
        offset += static_cast<int64_t>(piece.size());
      }
      return absl::OkStatus();
    };
  }
  rpc::ChunkAssembler assembler(limits, std::move(hooks));
  while (next(&st)) {
    if (!st.ok()) return st;
    if (msg.has_header()) return absl::InvalidArgumentError("a second header arrived in the stream");
    if (!msg.has_chunk()) return absl::InvalidArgumentError("a stream message with neither header nor chunk");
    if (absl::Status s = assembler.Add(msg.chunk(), split.data); !s.ok()) return over_budget(s);
  }
  // A Read fails when the client cancels: asked once here (under the sync API the question
  // plucks the call's completion queue, ≈ 30 µs), not for every chunk.
  if (ctx->IsCancelled()) return rpc::CallEnded(ctx, "LoadModelStream");
  if (absl::Status s = assembler.Finish(); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("the stream ended early: ", s.message()));
  }
  absl::StatusOr<std::shared_ptr<const LoadedModel>> model;
  if (streamed) {
    if (assembler.received() != manifest->entries().size()) {
      return absl::InvalidArgumentError(absl::StrCat("the stream ended early: ", assembler.received(), " of the ",
                                                     manifest->entries().size(),
                                                     " tensors in the header's manifest arrived"));
    }
    model = engine_->FinishStreamedLoad(*streamed, ControlOf(ctx));
  } else {
    // The same checks as a path load: a stream that ended cleanly but early (a Linear without
    // its scale, a decoder layer or Linear missing) is refused, not loaded in part.
    if (*copy != nullptr) {
      if (absl::Status s = (*copy)->AddAll(assembler.tensors()); !s.ok()) return s;
    }
    model = engine_->LoadFromTensors(name, config, std::move(assembler.tensors()), ControlOf(ctx));
  }
  if (!model.ok()) return model.status();
  if (*copy != nullptr) {
    if (absl::Status s = engine_->RememberStreamed(name, *model, **copy); !s.ok()) return s;
  }
  v1::LoadModelStreamResponse resp;
  ModelInfoToProto(**model, engine_->Info().backend, resp.mutable_model());
  return resp;
}

grpc::Status RuntimeServiceImpl::UnloadModel(grpc::ServerContext* ctx, const v1::UnloadModelRequest* req,
                                             v1::UnloadModelResponse*) {
  rpc::CallGuard guard(ctx, service_, "UnloadModel");
  if (!guard.ok()) return guard.Finish(guard.auth_status());
  return guard.Finish(rpc::ToGrpcStatus(engine_->Unload(req->name())));
}

grpc::Status RuntimeServiceImpl::ListModels(grpc::ServerContext* ctx, const v1::ListModelsRequest*,
                                            v1::ListModelsResponse* resp) {
  rpc::CallGuard guard(ctx, service_, "ListModels");
  if (!guard.ok()) return guard.Finish(guard.auth_status());
  const std::string backend = engine_->Info().backend;
  for (const auto& m : engine_->registry().List()) ModelInfoToProto(*m, backend, resp->add_models());
  return guard.Finish(grpc::Status::OK);
}

grpc::Status RuntimeServiceImpl::GetServerInfo(grpc::ServerContext* ctx, const v1::GetServerInfoRequest*,
                                               v1::GetServerInfoResponse* resp) {
  rpc::CallGuard guard(ctx, service_, "GetServerInfo");
  if (!guard.ok()) return guard.Finish(guard.auth_status());
  EngineInfo info = engine_->Info();
  resp->set_version(info.version);
  resp->set_backend(info.backend);
  resp->set_device(info.device);
  resp->set_compute_capability(info.compute_capability);
  for (const auto& s : info.schemes) resp->add_schemes(s);
  resp->set_requirements(info.requirements);
  resp->set_memory_budget_bytes(info.memory_budget_bytes);
  resp->set_memory_used_bytes(info.memory_used_bytes);
  resp->set_max_message_bytes(options_.max_message_bytes);
  resp->set_batching(info.batching.enabled);
  resp->set_max_queue_delay_us(info.batching.max_queue_delay_us);
  return guard.Finish(grpc::Status::OK);
}

absl::Status RuntimeServiceImpl::DoGemm(const CallControl& control, const v1::GemmRequest& req,
                                        v1::GemmResponse* resp) {
  GemmRequest r;
  r.model = req.model();
  r.layer = req.layer();
  if (!req.has_x()) return absl::InvalidArgumentError("x is missing");
  absl::StatusOr<Tensor> x = rpc::TensorFromProto(req.x(), "x");
  if (!x.ok()) return x.status();
  r.x = *std::move(x);
  if (req.out_dtype() != v1::DTYPE_UNSPECIFIED) {
    absl::StatusOr<DType> d = rpc::DTypeFromProto(req.out_dtype());
    if (!d.ok()) return absl::InvalidArgumentError(absl::StrCat("out_dtype: ", d.status().message()));
    r.out_dtype = *d;
  }
  // The response's other fields are a few dozen bytes.
  r.max_result_bytes = std::max<int64_t>(1, options_.max_message_bytes - 4096);
  absl::StatusOr<GemmResult> y = engine_->Gemm(r, control);
  if (!y.ok()) return y.status();
  rpc::TensorToProto(y->y, resp->mutable_y());
  resp->set_kernel_us(y->kernel_us());
  resp->set_batch_requests(y->batch_requests);
  return absl::OkStatus();
}

grpc::Status RuntimeServiceImpl::GemmRaw(grpc::ServerContext* ctx, rpc::RawServerStream* stream) {
  rpc::CallGuard guard(ctx, service_, "Gemm");
  if (!guard.ok()) return guard.Finish(guard.auth_status());
  grpc::ByteBuffer raw;
  if (!stream->Read(&raw)) {
    if (ctx->IsCancelled()) return guard.Finish(rpc::ToGrpcStatus(rpc::CallEnded(ctx, "Gemm")));
    return guard.Finish(rpc::ToGrpcStatus(absl::InvalidArgumentError("the Gemm call carried no request message")));
  }
  const size_t size = raw.Length();
  v1::GemmRequest req;
  if (!rpc::Decode(raw, &req).ok()) {
    return guard.Finish(rpc::ToGrpcStatus(absl::InvalidArgumentError(
        absl::StrCat("the Gemm request (", size, " bytes) did not parse as a lowbit.v1.GemmRequest"))));
  }
  v1::GemmResponse resp;
  if (absl::Status s = DoGemm(ControlOf(ctx), req, &resp); !s.ok()) return guard.Finish(rpc::ToGrpcStatus(s));
  grpc::ByteBuffer bytes;
  if (absl::Status s = rpc::EncodeTo(resp, &bytes); !s.ok()) return guard.Finish(rpc::ToGrpcStatus(s));
  // Buffered and sent with the status (one batch, as a unary handler sends it). A failed write
  // means the client went; the status is then not seen by anyone.
  if (!stream->Write(bytes, grpc::WriteOptions().set_last_message())) {
    return guard.Finish(rpc::ToGrpcStatus(rpc::CallEnded(ctx, "Gemm")));
  }
  return guard.Finish(grpc::Status::OK);
}

grpc::Status RuntimeServiceImpl::GemmStreamRaw(grpc::ServerContext* ctx, rpc::RawServerStream* stream) {
  rpc::CallGuard guard(ctx, service_, "GemmStream");
  if (!guard.ok()) return guard.Finish(guard.auth_status());
  StreamEnd end = ServeConcurrently<v1::GemmStreamRequest>(
      ctx, stream, options_.max_stream_inflight, "GemmStream",
      [this](const CallControl& control, v1::GemmStreamRequest& r, grpc::ByteBuffer* bytes) {
        v1::GemmStreamResponse out;
        out.set_request_id(r.request_id());
        absl::Status s = DoGemm(control, r.request(), out.mutable_response());
        if (!s.ok()) {
          out.clear_response();
          out.set_error_code(static_cast<int32_t>(s.code()));
          out.set_error_message(std::string(s.message()));
        }
        return rpc::EncodeTo(out, bytes).ok();
      });
  if (end.cancelled) return guard.Finish(rpc::ToGrpcStatus(rpc::CallEnded(ctx, "GemmStream")));
  return guard.Finish(rpc::ToGrpcStatus(end.malformed));
}

}  // namespace lowbit::runtime
