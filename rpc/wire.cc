#include "rpc/wire.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "grpcpp/impl/codegen/proto_utils.h"
#include "rpc/crc32c.h"

namespace lowbit::rpc {
namespace {

constexpr int kVarint = 0, kFixed64 = 1, kLengthDelimited = 2, kFixed32 = 5;

void AppendVarint(uint64_t v, std::string* out) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>((v & 0x7F) | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

void AppendTag(int field, int wire_type, std::string* out) {
  AppendVarint((static_cast<uint64_t>(field) << 3) | static_cast<uint64_t>(wire_type), out);
}

absl::Status Malformed(const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat("malformed message: ", why));
}

// Reads the bytes of a message held in a list of slices, front to back.
class Cursor {
 public:
  explicit Cursor(const std::vector<grpc::Slice>& slices) : slices_(slices) {
    for (const grpc::Slice& s : slices) size_ += s.size();
  }
  size_t pos() const { return pos_; }
  size_t size() const { return size_; }

  bool ReadVarint(uint64_t* v) {
    *v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      uint8_t b;
      if (!ReadByte(&b)) return false;
      *v |= static_cast<uint64_t>(b & 0x7F) << shift;
      if ((b & 0x80) == 0) return true;
    }
    return false;  // over 10 bytes
  }

  // Calls fn(span) for the next n bytes, slice by slice. The caller checked n against the end.
  template <class Fn>
  void Take(size_t n, Fn&& fn) {
    while (n > 0) {
      SkipEmptySlices();
      const grpc::Slice& s = slices_[slice_];
      const size_t k = std::min(n, s.size() - off_);
      fn(std::span<const uint8_t>(s.begin() + off_, k));
      Advance(k);
      n -= k;
    }
  }

 private:
  bool ReadByte(uint8_t* b) {
    if (pos_ >= size_) return false;
    SkipEmptySlices();
    *b = slices_[slice_].begin()[off_];
    Advance(1);
    return true;
  }
  void SkipEmptySlices() {
    while (off_ == slices_[slice_].size()) {
      ++slice_;
      off_ = 0;
    }
  }
  void Advance(size_t k) {
    off_ += k;
    pos_ += k;
  }

  const std::vector<grpc::Slice>& slices_;
  size_t slice_ = 0, off_ = 0, pos_ = 0, size_ = 0;
};

// A Cursor::Take callback that appends the bytes to `out`.
auto AppendTo(std::string* out) {
  return [out](std::span<const uint8_t> p) { out->append(reinterpret_cast<const char*>(p.data()), p.size()); };
}

// Copies the fields of the message in [cursor.pos(), end) to `rest`, re-encoded, except the
// bulk field: its bytes go to `data` (not copied), and the sub-message in where.wrap_field is
// split the same way (its length prefix rewritten for what remains of it).
absl::Status SplitFields(Cursor& c, size_t end, BulkField where, bool top, std::string* rest, DataPieces* data) {
  while (c.pos() < end) {
    uint64_t tag, v;
    if (!c.ReadVarint(&tag) || c.pos() > end) return Malformed("truncated field tag");
    const uint64_t number = tag >> 3;
    const int type = static_cast<int>(tag & 7);
    if (number == 0 || number > (uint64_t{1} << 29) - 1) return Malformed(absl::StrCat("field number ", number));
    const bool sibling = std::find(where.oneof_siblings.begin(), where.oneof_siblings.end(),
                                   static_cast<int64_t>(number)) != where.oneof_siblings.end();
    if (top && sibling && type == kLengthDelimited) {
      // The oneof switches away from the wrapper: its bulk bytes are gone. (With another wire
      // type protobuf keeps the field as unknown and the oneof does not switch.)
      *data = DataPieces();
    }
    const bool bulk = number == static_cast<uint64_t>(where.field) && (!top || where.wrap_field == 0);
    const bool wrap = top && where.wrap_field > 0 && number == static_cast<uint64_t>(where.wrap_field);
    if ((bulk || wrap) && type != kLengthDelimited) {
      return Malformed(absl::StrCat("field ", number, " has wire type ", type, ", expected length-delimited"));
    }
    switch (type) {
      case kVarint:
        if (!c.ReadVarint(&v) || c.pos() > end) return Malformed(absl::StrCat("truncated varint in field ", number));
        AppendTag(static_cast<int>(number), type, rest);
        AppendVarint(v, rest);
        break;
      case kFixed64:
      case kFixed32: {
        const size_t n = type == kFixed64 ? 8 : 4;
        if (end - c.pos() < n) return Malformed(absl::StrCat("truncated fixed-width field ", number));
        AppendTag(static_cast<int>(number), type, rest);
        c.Take(n, AppendTo(rest));
        break;
      }
      case kLengthDelimited: {
        if (!c.ReadVarint(&v) || c.pos() > end) return Malformed(absl::StrCat("truncated length of field ", number));
        if (v > end - c.pos()) {
          return Malformed(absl::StrCat("field ", number, " says ", v, " bytes, but ", end - c.pos(), " remain"));
        }
        const size_t n = static_cast<size_t>(v);
        if (bulk) {
          *data = DataPieces();  // a repeated field: the last one wins, as in protobuf
          c.Take(n, [&](std::span<const uint8_t> p) { data->Append(p); });
        } else if (wrap) {
          std::string inner;
          if (absl::Status s = SplitFields(c, c.pos() + n, where, false, &inner, data); !s.ok()) return s;
          AppendTag(static_cast<int>(number), type, rest);
          AppendVarint(inner.size(), rest);
          rest->append(inner);
        } else {
          AppendTag(static_cast<int>(number), type, rest);
          AppendVarint(n, rest);
          c.Take(n, AppendTo(rest));
        }
        break;
      }
      default:  // 3 and 4 start and end a group (deprecated), 6 and 7 are not wire types
        return Malformed(absl::StrCat("field ", number, " has wire type ", type,
                                      type == 3 || type == 4 ? " (groups are not supported)" : " (not a wire type)"));
    }
  }
  return absl::OkStatus();
}

void ReleaseKeepAlive(void* p) { delete static_cast<std::shared_ptr<const void>*>(p); }

}  // namespace

DataPieces DataPieces::Of(std::string_view bytes) {
  DataPieces d;
  d.Append(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()));
  return d;
}

void DataPieces::Append(std::span<const uint8_t> piece) {
  if (piece.empty()) return;
  pieces.push_back(piece);
  size += piece.size();
}

uint32_t DataPieces::CopyTo(uint8_t* dst, uint32_t crc) const {
  for (std::span<const uint8_t> p : pieces) {
    std::memcpy(dst, p.data(), p.size());
    crc = rpc::Crc32c(dst, p.size(), crc);
    dst += p.size();
  }
  return crc;
}

uint32_t DataPieces::Crc32c(uint32_t crc) const {
  for (std::span<const uint8_t> p : pieces) crc = rpc::Crc32c(p.data(), p.size(), crc);
  return crc;
}

grpc::ByteBuffer EncodeWithBulk(const google::protobuf::MessageLite& message, BulkField where,
                                std::span<const uint8_t> data, std::shared_ptr<const void> keep_alive) {
  std::string head = message.SerializeAsString();
  if (!data.empty()) {
    AppendTag(where.field, kLengthDelimited, &head);
    AppendVarint(data.size(), &head);
  }
  if (where.wrap_field > 0) {
    std::string wrapped;
    AppendTag(where.wrap_field, kLengthDelimited, &wrapped);
    AppendVarint(head.size() + data.size(), &wrapped);
    head = wrapped + head;
  }
  std::vector<grpc::Slice> slices;
  slices.emplace_back(head);
  if (!data.empty()) {
    // gRPC only reads the slice; its constructor takes a non-const pointer.
    slices.emplace_back(const_cast<uint8_t*>(data.data()), data.size(), &ReleaseKeepAlive,
                        new std::shared_ptr<const void>(std::move(keep_alive)));
  }
  return grpc::ByteBuffer(slices.data(), slices.size());
}

absl::Status EncodeTo(const google::protobuf::MessageLite& message, grpc::ByteBuffer* out) {
  bool own = false;
  grpc::Status s = grpc::SerializationTraits<google::protobuf::MessageLite>::Serialize(message, out, &own);
  if (!s.ok()) {
    return absl::InternalError(absl::StrCat("a ", message.GetTypeName(), " could not be encoded (",
                                            message.ByteSizeLong(), " bytes): ", s.error_message()));
  }
  return absl::OkStatus();
}

grpc::ByteBuffer Encode(const google::protobuf::MessageLite& message) {
  grpc::ByteBuffer out;
  EncodeTo(message, &out).IgnoreError();  // a small message always serializes
  return out;
}

absl::Status Decode(const grpc::ByteBuffer& buffer, google::protobuf::MessageLite* message) {
  grpc::ByteBuffer parsed(buffer);  // shares the slices; the deserializer consumes its buffer
  if (!grpc::SerializationTraits<google::protobuf::MessageLite>::Deserialize(&parsed, message).ok()) {
    return Malformed(absl::StrCat("not a valid ", message->GetTypeName()));
  }
  return absl::OkStatus();
}

absl::Status SplitBulk(const grpc::ByteBuffer& buffer, BulkField where, SplitMessage* out) {
  out->slices.clear();
  out->rest.clear();
  out->data = DataPieces();
  if (grpc::Status s = buffer.Dump(&out->slices); !s.ok()) return Malformed(s.error_message());
  Cursor c(out->slices);
  return SplitFields(c, c.size(), where, /*top=*/true, &out->rest, &out->data);
}

absl::Status DecodeWithBulk(const grpc::ByteBuffer& buffer, BulkField where, google::protobuf::MessageLite* message,
                            SplitMessage* out) {
  if (absl::Status s = SplitBulk(buffer, where, out); !s.ok()) return s;
  if (!message->ParseFromString(out->rest)) {
    return Malformed(absl::StrCat("not a valid ", message->GetTypeName()));
  }
  return absl::OkStatus();
}

}  // namespace lowbit::rpc
