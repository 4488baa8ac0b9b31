// Raw (grpc::ByteBuffer) streams for the bulk streaming methods — FetchResult, UploadModel,
// LoadModelStream — so their messages can be framed with rpc/wire.h instead of being copied
// into and out of protobuf strings. The methods, their protobuf messages and what travels on
// the wire are unchanged; only how this code builds and reads those bytes differs.
//
// Server: a generated synchronous service replaces one method's handler by a raw one in its
// constructor (the mechanism the generated WithSplitStreamingMethod_* classes use): the handler
// gets a ServerReaderWriter of ByteBuffers, reads the request(s) and writes the response(s)
// itself. Client: ClientReader / ClientWriter of ByteBuffers on the same method name.
#ifndef LOWBIT_RPC_RAW_STREAM_H_
#define LOWBIT_RPC_RAW_STREAM_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "grpcpp/channel.h"
#include "grpcpp/client_context.h"
#include "grpcpp/impl/rpc_method.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/method_handler.h"
#include "absl/status/statusor.h"
#include "common/safetensors.h"
#include "grpcpp/support/sync_stream.h"
#include "lowbit/v1/tensor.pb.h"
#include "rpc/wire.h"

namespace lowbit::rpc {

// The raw methods (HTTP/2 paths) and where their bulk field sits.
inline constexpr char kFetchResultPath[] = "/lowbit.v1.CalibratorService/FetchResult";
inline constexpr char kUploadModelPath[] = "/lowbit.v1.CalibratorService/UploadModel";
inline constexpr char kLoadModelStreamPath[] = "/lowbit.v1.RuntimeService/LoadModelStream";
// The largest checkpoint side file (tokenizer.json, ...) FetchResult sends and a client accepts:
// the server holds it in memory while sending.
inline constexpr int64_t kMaxResultFileBytes = int64_t{1} << 30;
// TensorChunk.data inside FetchResultResponse.chunk (field 2, in a oneof with the header, field 1,
// and a side file's piece, field 3) and inside LoadModelStreamRequest.chunk (field 2, in a oneof
// with the header, field 1).
inline constexpr BulkField kResultChunkData{2, 5, {1, 3}};
inline constexpr BulkField kLoadChunkData{2, 5, {1, 0}};
inline constexpr BulkField kUploadModelData{0, 4};  // UploadModelRequest.data

using RawServerStream = grpc::ServerReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>;

// The index of the method at `path` in its generated service, from the protobuf descriptor
// (generated services add their methods in declaration order).
int MethodIndex(const std::string& path);

// A handler that runs `fn(service, ctx, stream)` for MarkMethodStreamed.
template <class Service>
grpc::internal::MethodHandler* RawHandler(Service* service,
                                          grpc::Status (Service::*fn)(grpc::ServerContext*, RawServerStream*)) {
  return new grpc::internal::BidiStreamingHandler<Service, grpc::ByteBuffer, grpc::ByteBuffer>(
      [fn](Service* s, grpc::ServerContext* ctx, RawServerStream* stream) { return (s->*fn)(ctx, stream); }, service);
}

// Client-streaming / server-streaming calls whose messages are ByteBuffers. `path` is the
// HTTP/2 path, "/lowbit.v1.CalibratorService/UploadModel", and must outlive the call.
template <class Response>
std::unique_ptr<grpc::ClientWriter<grpc::ByteBuffer>> RawClientWriter(grpc::ChannelInterface* channel,
                                                                      const char* path, grpc::ClientContext* ctx,
                                                                      Response* response) {
  const grpc::internal::RpcMethod method(path, grpc::internal::RpcMethod::CLIENT_STREAMING);
  return std::unique_ptr<grpc::ClientWriter<grpc::ByteBuffer>>(
      grpc::internal::ClientWriterFactory<grpc::ByteBuffer>::Create(channel, method, ctx, response));
}

template <class Request>
std::unique_ptr<grpc::ClientReader<grpc::ByteBuffer>> RawClientReader(grpc::ChannelInterface* channel,
                                                                      const char* path, grpc::ClientContext* ctx,
                                                                      const Request& request) {
  const grpc::internal::RpcMethod method(path, grpc::internal::RpcMethod::SERVER_STREAMING);
  return std::unique_ptr<grpc::ClientReader<grpc::ByteBuffer>>(
      grpc::internal::ClientReaderFactory<grpc::ByteBuffer>::Create(channel, method, ctx, request));
}

// The order a model's tensors are sent in. kByName keeps a layer's tensors together (a runtime
// prepares each layer as soon as its tensors are in: LoadModelStream); kByFile reads each file
// front to back and lets the receiver write each one front to back (FetchResult: `lowbit fetch`
// streams the files to disk with O_DIRECT then).
enum class TensorOrder { kByName, kByFile };

// Sends every tensor of `model` in `order` as chunk messages (FetchResultResponse and
// LoadModelStreamRequest alike) of at most `chunk_bytes` data bytes, the data framed as slices
// over the mapped file, each holding its tensor (and so the mapping) until gRPC has sent it.
// `write` sends one message and returns false when the stream is gone; then the sending stops
// and the result is false. A tensor that cannot be read is an error.
absl::StatusOr<bool> WriteModelChunks(const SafetensorsModel& model, TensorOrder order, int64_t chunk_bytes,
                                      const std::function<bool(const grpc::ByteBuffer&)>& write);
// The manifest of what WriteModelChunks sends, in its order: name, dtype, shape and file of
// every tensor (ResultHeader.manifest, LoadModelHeader.manifest).
void AddModelManifest(const SafetensorsModel& model, TensorOrder order,
                      google::protobuf::RepeatedPtrField<v1::TensorInfo>* manifest);

}  // namespace lowbit::rpc

#endif  // LOWBIT_RPC_RAW_STREAM_H_
