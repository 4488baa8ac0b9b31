// lowbit.v1.Tensor / TensorChunk <-> lowbit::Tensor, validated: every message from a client is
// checked (dtype known, dims ≥ 0, element count within limits, bytes == numel · dtype size)
// before anything is allocated from it, and chunked tensors are reassembled with their offsets
// and CRC-32C checked.
#ifndef LOWBIT_RPC_TENSOR_CODEC_H_
#define LOWBIT_RPC_TENSOR_CODEC_H_

#include <climits>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/tensor.h"
#include "lowbit/v1/tensor.pb.h"
#include "rpc/wire.h"

namespace lowbit::rpc {

absl::StatusOr<DType> DTypeFromProto(v1::DType dtype);
v1::DType DTypeToProto(DType dtype);

// Two kinds of limit, reported with two codes:
//  - max_rank / max_bytes: what is accepted at all. A negative dimension, a size that overflows
//    int64, a rank or a tensor over these is an invalid request: INVALID_ARGUMENT. A chunk
//    stream whose tensors add up past max_bytes is RESOURCE_EXHAUSTED.
//  - budget_bytes: what the receiver can hold now (the runtime: its memory budget's bytes left).
//    A valid tensor that takes a chunk stream's total (or a manifest's) past it is
//    RESOURCE_EXHAUSTED, with the bytes needed and the budget, whether it is the first tensor or
//    a later one: the same request may fit later, once memory was freed.
struct TensorLimits {
  int max_rank = 8;
  int64_t max_bytes = int64_t{1} << 34;  // 16 GiB
  int64_t budget_bytes = INT64_MAX;      // none
};

// Validates and copies. `what` names the field in error messages ("x", "weight").
absl::StatusOr<Tensor> TensorFromProto(const v1::Tensor& proto, const std::string& what,
                                       const TensorLimits& limits = {});
void TensorToProto(const Tensor& tensor, v1::Tensor* proto);

// Splits a tensor into chunks of at most `chunk_bytes` data bytes (at least one chunk, even for
// an empty tensor) and calls `emit` for each with the chunk's fields except `data`, and the
// data as a view into the tensor (to frame without a copy: rpc/wire.h); stops at the first
// false and returns false.
bool ForEachChunk(const std::string& name, const Tensor& tensor, int64_t chunk_bytes,
                  const std::function<bool(const v1::TensorChunk& meta, std::span<const uint8_t> data)>& emit);

// A stream header's manifest (FetchResult's and LoadModelStream's `TensorInfo`s): every tensor
// the stream will carry, decoded and checked like a tensor (dtype known, dims ≥ 0, bytes within
// the limits), no name twice, and all of them within limits.budget_bytes (RESOURCE_EXHAUSTED).
class Manifest {
 public:
  struct Entry {
    std::string name;
    DType dtype;
    Shape shape;
    int64_t bytes = 0;
    std::string file;  // FetchResult: the safetensors file that holds it
  };
  // InvalidArgument naming the tensor; ResourceExhausted over limits.budget_bytes.
  static absl::StatusOr<Manifest> FromProto(const google::protobuf::RepeatedPtrField<v1::TensorInfo>& infos,
                                            const TensorLimits& limits = {});
  const std::vector<Entry>& entries() const { return entries_; }  // in chunk order
  // A tensor's first chunk against its entry: InvalidArgument unless listed with this dtype
  // and shape.
  absl::Status Check(const std::string& name, DType dtype, const Shape& shape) const;

 private:
  std::vector<Entry> entries_;
  std::map<std::string, size_t> index_;
};

// Where ChunkReceiver puts the tensors' bytes.
class TensorSink {
 public:
  virtual ~TensorSink() = default;
  // A tensor starts; its name, dtype, shape and byte count passed the checks.
  virtual absl::Status Begin(const std::string& name, DType dtype, const Shape& shape, int64_t bytes) = 0;
  // Stores `data` at byte `offset` of the current tensor and returns its CRC-32C chained onto `crc`.
  virtual absl::StatusOr<uint32_t> Store(int64_t offset, const DataPieces& data, uint32_t crc) = 0;
  // The current tensor is complete and its CRC-32C matched.
  virtual absl::Status End() = 0;
};

// Checks a chunk stream (ForEachChunk's output, any number of tensors one after another) and
// hands each tensor's bytes to a sink. Errors name the tensor: out-of-order offset, a chunk for
// another tensor before the last one ended, bytes past the shape, a CRC mismatch, a duplicate
// name (INVALID_ARGUMENT), a stream over limits.max_bytes or limits.budget_bytes
// (RESOURCE_EXHAUSTED, TensorLimits).
class ChunkReceiver {
 public:
  ChunkReceiver(TensorSink& sink, TensorLimits limits) : sink_(sink), limits_(limits) {}
  // `chunk`'s fields with its data given apart (DecodeWithBulk).
  absl::Status Add(const v1::TensorChunk& chunk, const DataPieces& data);
  // OK only when no tensor is half received.
  absl::Status Finish() const;
  int64_t total_bytes() const { return total_bytes_; }
  size_t tensors() const { return seen_.size(); }

 private:
  TensorSink& sink_;
  TensorLimits limits_;
  std::set<std::string> seen_;
  std::string current_name_;  // the tensor being received
  int64_t size_ = 0;
  int64_t received_ = 0;
  uint32_t crc_ = 0;
  bool in_progress_ = false;
  int64_t total_bytes_ = 0;
};

// Reassembles named tensors from a chunk stream in memory (a ChunkReceiver into its own
// buffers). The tensors are read-only views of their buffers.
class ChunkAssembler : private TensorSink {
 public:
  struct Hooks {
    // At a tensor's first chunk, before its memory is allocated; an error stops the stream.
    std::function<absl::Status(const std::string& name, DType dtype, const Shape& shape)> check;
    // Each complete tensor, handed over instead of kept in tensors(); an error stops the stream.
    std::function<absl::Status(const std::string& name, Tensor tensor)> take;
    // At a tensor's first chunk, after `check`: whether to assemble it in memory (absent: every
    // tensor is). One declined takes no memory: its chunks go to `pass` as they arrive, checked
    // and checksummed all the same, and neither `take` nor tensors() sees it (received() does).
    std::function<bool(const std::string& name)> hold;
    // Each chunk of a declined tensor at its byte offset; an error stops the stream. The bytes are
    // passed before the tensor's CRC-32C is known: a mismatch fails the stream after them.
    std::function<absl::Status(const std::string& name, int64_t offset, const DataPieces& data)> pass;
  };
  // While any assembler is receiving (from construction to Finish), the memory of large received
  // tensors (≥ 32 MiB) that are freed is kept and reused for the next ones (tensor_codec.cc,
  // ReceivePool): no fresh pages per layer when tensors are dropped as they are used.
  explicit ChunkAssembler(TensorLimits limits = {}, Hooks hooks = {});
  ~ChunkAssembler() override;
  ChunkAssembler(const ChunkAssembler&) = delete;
  ChunkAssembler& operator=(const ChunkAssembler&) = delete;
  absl::Status Add(const v1::TensorChunk& chunk) { return Add(chunk, DataPieces::Of(chunk.data())); }
  // Copies the data straight into the tensor.
  absl::Status Add(const v1::TensorChunk& chunk, const DataPieces& data) { return receiver_.Add(chunk, data); }
  // Checks that the stream ended cleanly. From here on freed memory goes back to the system: what
  // the caller does with the tensors next (prepare them all, drop them) does not grow the pool.
  absl::Status Finish();
  std::map<std::string, Tensor>& tensors() { return done_; }
  int64_t total_bytes() const { return receiver_.total_bytes(); }
  size_t received() const { return receiver_.tensors(); }

 private:
  absl::Status Begin(const std::string& name, DType dtype, const Shape& shape, int64_t bytes) override;
  absl::StatusOr<uint32_t> Store(int64_t offset, const DataPieces& data, uint32_t crc) override;
  absl::Status End() override;

  ChunkReceiver receiver_;
  Hooks hooks_;
  std::map<std::string, Tensor> done_;
  std::string name_;
  DType dtype_ = DType::kF32;
  Shape shape_;
  std::shared_ptr<uint8_t> buffer_;
  bool holding_ = true;    // the current tensor is assembled in buffer_ (else passed on)
  bool receiving_ = true;  // counted in the pool's receiving assemblers
};

}  // namespace lowbit::rpc

#endif  // LOWBIT_RPC_TENSOR_CODEC_H_
