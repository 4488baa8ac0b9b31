// Zero-copy framing of streamed messages whose bulk is one `bytes` field (TensorChunk.data,
// UploadModelRequest.data), used by the raw stream methods (rpc/raw_stream.h) on both ends.
//
// Sending: the message is serialized without that field and the field is appended as a gRPC
// slice that points at the caller's memory (a mapped file), so no user-space copy is made.
// Protobuf parsers accept fields in any order, so every client (Python included) reads the same
// message it would get from SerializeToString.
//
// Receiving: the bulk field's bytes stay in gRPC's receive slices (DataPieces); only the rest of
// the message — a few dozen bytes — is copied out and parsed by protobuf, so every other field is
// validated exactly as before and the data is copied once, straight into its destination.
#ifndef LOWBIT_RPC_WIRE_H_
#define LOWBIT_RPC_WIRE_H_

#include <array>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "google/protobuf/message_lite.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/slice.h"

namespace lowbit::rpc {

// The bytes of one field, possibly spread over several receive slices.
struct DataPieces {
  std::vector<std::span<const uint8_t>> pieces;
  size_t size = 0;

  static DataPieces Of(std::string_view bytes);
  void Append(std::span<const uint8_t> piece);
  // Copies all pieces to `dst` (size bytes) and returns their CRC-32C chained onto `crc`; each
  // piece is checksummed right after its copy, while it is still in cache.
  uint32_t CopyTo(uint8_t* dst, uint32_t crc) const;
  uint32_t Crc32c(uint32_t crc) const;
};

// Where the bulk field sits: field `field` of the message, or, when wrap_field > 0, field
// `field` of the sub-message held in field `wrap_field` (FetchResultResponse.chunk.data and
// LoadModelStreamRequest.chunk.data: wrap_field 2, field 5).
struct BulkField {
  int wrap_field = 0;
  int field = 0;
  // The top-level fields in the same oneof as wrap_field (0: none). When one appears, protobuf
  // clears the wrapper and with it any bulk bytes seen so far; the splitter does the same.
  std::array<int, 2> oneof_siblings = {};
};

// `message` (whose bulk field must be empty; with where.wrap_field it is the sub-message, and
// the result holds only it) followed by `data` as field where.field. `data` is not copied: it
// must stay valid until gRPC releases the slice, which holds a reference to `keep_alive`.
grpc::ByteBuffer EncodeWithBulk(const google::protobuf::MessageLite& message, BulkField where,
                                std::span<const uint8_t> data, std::shared_ptr<const void> keep_alive);

// A plain protobuf message to and from a ByteBuffer, through gRPC's own protobuf serializer (what
// a typed stream's Write and Read use: a large message is written into slices without an
// intermediate string, and one received in several slices is parsed without flattening it).
// EncodeTo: INTERNAL for a message protobuf cannot serialize (over 2 GiB). Encode: for the small
// messages of a raw stream (headers, acknowledgements), which always serialize.
absl::Status EncodeTo(const google::protobuf::MessageLite& message, grpc::ByteBuffer* out);
grpc::ByteBuffer Encode(const google::protobuf::MessageLite& message);
absl::Status Decode(const grpc::ByteBuffer& buffer, google::protobuf::MessageLite* message);

// A received message with its bulk field split off. `data` points into `slices`.
struct SplitMessage {
  std::vector<grpc::Slice> slices;
  std::string rest;  // the message without the bulk field, to parse with protobuf
  DataPieces data;   // the bulk field (the last one, as protobuf does, if it is repeated)
};

// Splits `buffer` into `out`. InvalidArgument "malformed message: ..." for bytes that are not
// protobuf wire format (a truncated varint or field, a length past the end, a group, an unknown
// wire type, a bulk field that is not length-delimited).
absl::Status SplitBulk(const grpc::ByteBuffer& buffer, BulkField where, SplitMessage* out);

// SplitBulk, then protobuf's parse of the rest into `message`.
absl::Status DecodeWithBulk(const grpc::ByteBuffer& buffer, BulkField where, google::protobuf::MessageLite* message,
                            SplitMessage* out);

}  // namespace lowbit::rpc

#endif  // LOWBIT_RPC_WIRE_H_
