// libFuzzer target for rpc/wire.h's hand-written splitter, which parses what clients send to
// the bulk streaming methods before protobuf sees it. The input's first byte picks where the
// rest is cut into receive slices; the rest is the message. Checks, for FetchResultResponse and
// LoadModelStreamRequest (bulk field chunk.data, in oneofs of three and two members) and
// UploadModelRequest (bulk field data):
//   * any bytes give a message or INVALID_ARGUMENT, never a crash (ASan / UBSan in the fuzz build);
//   * the bulk pieces add up to data.size (and are readable: ASan in the fuzz build);
//   * differential: when the split and the parse of the rest succeed, protobuf parses the whole
//     input too, and the message it gets equals the rest's message with the bulk bytes put back.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/slice.h"
#include "lowbit/v1/calibrator.pb.h"
#include "lowbit/v1/runtime.pb.h"
#include "rpc/raw_stream.h"
#include "rpc/wire.h"

namespace {

using lowbit::rpc::BulkField;
using lowbit::rpc::SplitMessage;

std::string Joined(const lowbit::rpc::DataPieces& d) {
  std::string s;
  for (auto p : d.pieces) s.append(reinterpret_cast<const char*>(p.data()), p.size());
  return s;
}

template <class Message>
void Check(const grpc::ByteBuffer& buffer, const std::string& whole, BulkField where,
           std::string* (*bulk)(Message&)) {
  Message msg;
  SplitMessage split;
  absl::Status s = lowbit::rpc::DecodeWithBulk(buffer, where, &msg, &split);
  if (!s.ok()) {
    if (s.code() != absl::StatusCode::kInvalidArgument) std::abort();
    return;
  }
  size_t total = 0;
  for (auto p : split.data.pieces) total += p.size();
  if (total != split.data.size) std::abort();
  Message full;
  if (!full.ParseFromString(whole)) std::abort();  // we accepted what protobuf refuses
  if (split.data.size > 0) *bulk(msg) = Joined(split.data);
  if (msg.SerializeAsString() != full.SerializeAsString()) std::abort();
}

std::string* ChunkData(lowbit::v1::FetchResultResponse& m) { return m.mutable_chunk()->mutable_data(); }
std::string* LoadData(lowbit::v1::LoadModelStreamRequest& m) { return m.mutable_chunk()->mutable_data(); }
std::string* UploadData(lowbit::v1::UploadModelRequest& m) { return m.mutable_data(); }

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const unsigned step = data[0] == 0 ? 0 : data[0];  // 0: one slice; else cut every `step` bytes
  const std::string whole(reinterpret_cast<const char*>(data + 1), size - 1);
  std::vector<grpc::Slice> slices;
  if (step == 0 || whole.empty()) {
    slices.emplace_back(whole);
  } else {
    for (size_t at = 0; at < whole.size(); at += step) slices.emplace_back(whole.substr(at, step));
  }
  const grpc::ByteBuffer buffer(slices.data(), slices.size());
  Check<lowbit::v1::FetchResultResponse>(buffer, whole, lowbit::rpc::kResultChunkData, &ChunkData);
  Check<lowbit::v1::LoadModelStreamRequest>(buffer, whole, lowbit::rpc::kLoadChunkData, &LoadData);
  Check<lowbit::v1::UploadModelRequest>(buffer, whole, lowbit::rpc::kUploadModelData, &UploadData);
  return 0;
}
