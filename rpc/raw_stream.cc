#include "rpc/raw_stream.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "google/protobuf/descriptor.h"
#include "rpc/tensor_codec.h"

namespace lowbit::rpc {

int MethodIndex(const std::string& path) {
  // "/pkg.Service/Method" -> "pkg.Service.Method"
  std::string name = path.substr(path.empty() ? 0 : 1);
  std::replace(name.begin(), name.end(), '/', '.');
  const google::protobuf::MethodDescriptor* m =
      google::protobuf::DescriptorPool::generated_pool()->FindMethodByName(name);
  if (m == nullptr) {
    // A programming error (a misspelt constant), found by every test that starts a server.
    std::fprintf(stderr, "lowbit: no gRPC method at %s\n", path.c_str());
    std::abort();
  }
  return m->index();
}

namespace {
std::vector<std::string> Names(const SafetensorsModel& model, TensorOrder order) {
  return order == TensorOrder::kByFile ? model.names_in_file_order() : model.names();
}
}  // namespace

void AddModelManifest(const SafetensorsModel& model, TensorOrder order,
                      google::protobuf::RepeatedPtrField<v1::TensorInfo>* manifest) {
  for (const std::string& name : Names(model, order)) {
    const SafetensorsEntry* e = model.Find(name);
    v1::TensorInfo* t = manifest->Add();
    t->set_name(name);
    t->set_dtype(DTypeToProto(e->dtype));
    t->mutable_shape()->Assign(e->shape.begin(), e->shape.end());
    t->set_file(model.FileOf(name));
  }
}

absl::StatusOr<bool> WriteModelChunks(const SafetensorsModel& model, TensorOrder order, int64_t chunk_bytes,
                                      const std::function<bool(const grpc::ByteBuffer&)>& write) {
  for (const std::string& name : Names(model, order)) {
    absl::StatusOr<Tensor> t = model.Get(name);
    if (!t.ok()) return t.status();
    auto keep = std::make_shared<const Tensor>(*std::move(t));
    const bool sent =
        ForEachChunk(name, *keep, chunk_bytes, [&](const v1::TensorChunk& meta, std::span<const uint8_t> data) {
          return write(EncodeWithBulk(meta, kResultChunkData, data, keep));  // the same fields as kLoadChunkData
        });
    if (!sent) return false;
  }
  return true;
}

}  // namespace lowbit::rpc
