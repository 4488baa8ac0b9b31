// rpc/: checksums, the wire codec and the server plumbing, against independent expectations:
// published CRC-32C check values, hand-built protos, and a real server on a loopback port
// probed through generated stubs (grpc.health.v1 and lowbit.v1).
#include <dlfcn.h>
#include <pthread.h>
#include <sys/resource.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <thread>

#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "lowbit/v1/calibrator.pb.h"
#include "lowbit/v1/runtime.grpc.pb.h"
#include "rpc/client.h"
#include "rpc/crc32c.h"
#include "rpc/raw_stream.h"
#include "rpc/server.h"
#include "rpc/status.h"
#include "rpc/tensor_codec.h"
#include "rpc/thread_stack_floor.h"
#include "rpc/wire.h"

namespace lowbit::rpc {
namespace {

TEST(Crc32c, PublishedCheckValues) {
  // The CRC catalogue's check value for CRC-32C, and RFC 3720 (iSCSI) B.4's vectors.
  EXPECT_EQ(Crc32c("123456789", 9), 0xE3069283u);
  std::string zeros(32, '\0'), ones(32, '\xff'), inc(32, '\0');
  for (int i = 0; i < 32; ++i) inc[i] = static_cast<char>(i);
  EXPECT_EQ(Crc32c(zeros.data(), 32), 0x8A9136AAu);
  EXPECT_EQ(Crc32c(ones.data(), 32), 0x62A8AB43u);
  EXPECT_EQ(Crc32c(inc.data(), 32), 0x46DD794Eu);
}

TEST(Crc32c, ChainsOverSplits) {
  std::string s(1000, 'x');
  std::mt19937 rng(1);
  for (auto& c : s) c = static_cast<char>(rng());
  const uint32_t whole = Crc32c(s.data(), s.size());
  for (size_t k : {0, 1, 7, 8, 9, 500, 999, 1000}) {
    EXPECT_EQ(Crc32c(s.data() + k, s.size() - k, Crc32c(s.data(), k)), whole) << k;
  }
}

v1::Tensor MakeProto(v1::DType dtype, std::vector<int64_t> shape, size_t bytes) {
  v1::Tensor t;
  t.set_dtype(dtype);
  for (auto d : shape) t.add_shape(d);
  t.set_data(std::string(bytes, '\x01'));
  return t;
}

TEST(TensorCodec, AcceptsConsistentTensor) {
  auto t = TensorFromProto(MakeProto(v1::DTYPE_BF16, {3, 5}, 30), "x");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->dtype(), DType::kBF16);
  EXPECT_EQ(t->shape(), (Shape{3, 5}));
  v1::Tensor back;
  TensorToProto(*t, &back);
  EXPECT_EQ(back.data(), std::string(30, '\x01'));
  EXPECT_EQ(back.dtype(), v1::DTYPE_BF16);
}

TEST(TensorCodec, RefusesInconsistentTensors) {
  struct Case {
    v1::Tensor proto;
    std::string needle;
  } cases[] = {
      {MakeProto(v1::DTYPE_F32, {2, 2}, 15), "15 data bytes"},
      {MakeProto(v1::DTYPE_F32, {2, -2}, 0), "negative"},
      {MakeProto(v1::DTYPE_UNSPECIFIED, {1}, 4), "not a tensor dtype"},
      {MakeProto(static_cast<v1::DType>(99), {1}, 4), "not a tensor dtype"},
      {MakeProto(v1::DTYPE_F16, {int64_t{1} << 40, int64_t{1} << 40}, 0), "limit"},
      {MakeProto(v1::DTYPE_I8, {1, 1, 1, 1, 1, 1, 1, 1, 1}, 1), "rank"},
  };
  for (const auto& c : cases) {
    auto t = TensorFromProto(c.proto, "x");
    ASSERT_FALSE(t.ok()) << c.needle;
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(t.status().message().find(c.needle), std::string::npos) << t.status();
    EXPECT_EQ(t.status().message().substr(0, 2), "x:") << t.status();
  }
}

std::vector<v1::TensorChunk> Chunks(const std::string& name, const Tensor& t, int64_t size) {
  std::vector<v1::TensorChunk> out;
  ForEachChunk(name, t, size, [&](const v1::TensorChunk& meta, std::span<const uint8_t> data) {
    out.push_back(meta);
    out.back().set_data(data.data(), data.size());
    return true;
  });
  return out;
}

Tensor Iota(int64_t n) {
  Tensor t = Tensor::Zeros(DType::kI32, {n});
  for (int64_t i = 0; i < n; ++i) t.mutable_data<int32_t>()[i] = static_cast<int32_t>(i * 2654435761u);
  return t;
}

TEST(Chunking, RoundTripsSeveralTensors) {
  Tensor a = Iota(100), b = Iota(3), empty = Tensor::Zeros(DType::kF32, {0, 4});
  auto ca = Chunks("a", a, 7);
  EXPECT_EQ(ca.size(), 58u);  // 400 bytes in chunks of 7
  ChunkAssembler asm_;
  for (auto* cs : {&ca})
    for (auto& c : *cs) ASSERT_TRUE(asm_.Add(c).ok());
  for (auto& c : Chunks("b", b, 1 << 20)) ASSERT_TRUE(asm_.Add(c).ok());
  auto ce = Chunks("empty", empty, 16);
  ASSERT_EQ(ce.size(), 1u);
  ASSERT_TRUE(asm_.Add(ce[0]).ok());
  ASSERT_TRUE(asm_.Finish().ok());
  ASSERT_EQ(asm_.tensors().size(), 3u);
  auto& ra = asm_.tensors().at("a");
  EXPECT_EQ(ra.shape(), a.shape());
  EXPECT_TRUE(std::equal(ra.bytes().begin(), ra.bytes().end(), a.bytes().begin()));
  EXPECT_EQ(asm_.tensors().at("empty").shape(), (Shape{0, 4}));
  EXPECT_EQ(asm_.total_bytes(), 412);
}

long MinorFaults() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_minflt;
}

// A stream that drops each tensor as it is used (the runtime's streamed load) reuses the memory of
// the large ones (≥ 32 MiB, which glibc maps afresh on every allocation): the second 48 MiB tensor
// is received into the first one's pages — almost no page faults — and still holds its own bytes;
// once the assembler is gone the kept memory is freed (a new assembler faults its pages in again).
TEST(Chunking, LargeTensorsDroppedAsTheyComeReuseTheirMemory) {
  const int64_t n = int64_t{12} << 20;  // 48 MiB of int32
  Tensor a = Iota(n);
  Tensor b = Tensor::Zeros(DType::kI32, {n});
  for (int64_t i = 0; i < n; ++i) b.mutable_data<int32_t>()[i] = static_cast<int32_t>(i ^ 0x5a5a5a5a);
  const auto ca = Chunks("a", a, 4 << 20), cb = Chunks("b", b, 4 << 20), cc = Chunks("c", a, 4 << 20);
  const long pages = (n * 4) / 4096;
  bool b_ok = false;
  ChunkAssembler::Hooks hooks;
  hooks.take = [&](const std::string& name, Tensor t) {  // used at once, then dropped
    if (name == "b") b_ok = std::equal(t.bytes().begin(), t.bytes().end(), b.bytes().begin());
    return absl::OkStatus();
  };
  long faults_a = 0, faults_b = 0, faults_c = 0;
  {
    ChunkAssembler s({}, hooks);
    long f0 = MinorFaults();
    for (const auto& c : ca) ASSERT_TRUE(s.Add(c).ok());
    faults_a = MinorFaults() - f0;
    f0 = MinorFaults();
    for (const auto& c : cb) ASSERT_TRUE(s.Add(c).ok());
    faults_b = MinorFaults() - f0;
    ASSERT_TRUE(s.Finish().ok());
  }
  {
    ChunkAssembler s({}, hooks);
    const long f0 = MinorFaults();
    for (const auto& c : cc) ASSERT_TRUE(s.Add(c).ok());
    faults_c = MinorFaults() - f0;
  }
  EXPECT_TRUE(b_ok) << "the reused memory must hold the second tensor's own bytes";
  EXPECT_GT(faults_a, pages / 2) << "a fresh 48 MiB buffer faults its pages in";
  EXPECT_LT(faults_b, pages / 8) << "the second tensor should reuse the first one's pages";
  EXPECT_GT(faults_c, pages / 2) << "kept memory is freed with the last assembler";
}

// A tensor the hold hook declines is never assembled: its chunks reach `pass` at their offsets
// (put together, the tensor's exact bytes), `take` and tensors() never see it, received() counts
// it, and a flipped byte in it is still DATA_LOSS naming it.
TEST(Chunking, DeclinedTensorsArePassedOnNotAssembled) {
  Tensor a = Iota(100), big = Iota(1000);
  std::map<std::string, std::string> passed;
  std::vector<std::string> taken;
  ChunkAssembler::Hooks hooks;
  hooks.hold = [](const std::string& name) { return name != "big"; };
  hooks.pass = [&](const std::string& name, int64_t offset, const DataPieces& data) {
    std::string& dst = passed[name];
    EXPECT_EQ(static_cast<int64_t>(dst.size()), offset);
    for (auto piece : data.pieces) dst.append(reinterpret_cast<const char*>(piece.data()), piece.size());
    return absl::OkStatus();
  };
  hooks.take = [&](const std::string& name, Tensor t) {
    taken.push_back(name);
    EXPECT_TRUE(std::equal(t.bytes().begin(), t.bytes().end(), a.bytes().begin()));
    return absl::OkStatus();
  };
  {
    ChunkAssembler s({}, hooks);
    for (auto& c : Chunks("big", big, 333)) ASSERT_TRUE(s.Add(c).ok());
    for (auto& c : Chunks("a", a, 64)) ASSERT_TRUE(s.Add(c).ok());
    ASSERT_TRUE(s.Finish().ok());
    EXPECT_EQ(s.received(), 2u);
    EXPECT_TRUE(s.tensors().empty());
  }
  EXPECT_EQ(taken, std::vector<std::string>{"a"});
  ASSERT_EQ(passed.size(), 1u);
  EXPECT_EQ(passed["big"], std::string(reinterpret_cast<const char*>(big.bytes().data()), big.bytes().size()));
  // Without take, a held tensor lands in tensors() and a declined one does not.
  hooks.take = nullptr;
  passed.clear();
  {
    ChunkAssembler s({}, hooks);
    auto cs = Chunks("big", big, 333);
    for (auto& c : Chunks("a", a, 64)) ASSERT_TRUE(s.Add(c).ok());
    (*cs[5].mutable_data())[7] ^= 1;
    absl::Status st;
    for (auto& c : cs)
      if (st.ok()) st = s.Add(c);
    EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << st;
    EXPECT_NE(st.message().find("'big'"), std::string::npos) << st;
    EXPECT_EQ(s.tensors().size(), 1u);
    EXPECT_EQ(s.tensors().count("a"), 1u);
  }
  // A pass error stops the stream with it.
  hooks.pass = [](const std::string&, int64_t, const DataPieces&) { return absl::ResourceExhaustedError("disk full"); };
  ChunkAssembler s({}, hooks);
  EXPECT_EQ(s.Add(Chunks("big", big, 333)[0]).code(), absl::StatusCode::kResourceExhausted);
}

TEST(Chunking, RefusesBrokenStreams) {
  Tensor a = Iota(64);
  auto base = Chunks("a", a, 64);  // 4 chunks
  ASSERT_EQ(base.size(), 4u);
  {  // a flipped byte: the CRC catches it
    auto cs = base;
    (*cs[2].mutable_data())[5] ^= 1;
    ChunkAssembler s;
    absl::Status st;
    for (auto& c : cs)
      if (st.ok()) st = s.Add(c);
    EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << st;
  }
  {  // a skipped chunk
    ChunkAssembler s;
    ASSERT_TRUE(s.Add(base[0]).ok());
    auto st = s.Add(base[2]);
    EXPECT_NE(st.message().find("offset 128, expected 64"), std::string::npos) << st;
  }
  {  // truncated stream
    ChunkAssembler s;
    ASSERT_TRUE(s.Add(base[0]).ok());
    EXPECT_NE(s.Finish().message().find("ended inside tensor 'a'"), std::string::npos);
  }
  {  // another tensor interleaved
    ChunkAssembler s;
    ASSERT_TRUE(s.Add(base[0]).ok());
    auto other = Chunks("b", a, 64);
    EXPECT_FALSE(s.Add(other[0]).ok());
  }
  {  // too many bytes for the shape
    auto cs = base;
    cs[3].mutable_data()->append("xx");
    ChunkAssembler s;
    absl::Status st;
    for (auto& c : cs)
      if (st.ok()) st = s.Add(c);
    EXPECT_NE(st.message().find("holds 256"), std::string::npos) << st;
  }
  {  // the same name twice
    ChunkAssembler s;
    for (auto& c : base) ASSERT_TRUE(s.Add(c).ok());
    EXPECT_NE(s.Add(base[0]).message().find("sent twice"), std::string::npos);
  }
  {  // a stream over the byte limit
    ChunkAssembler s(TensorLimits{8, 100});
    EXPECT_FALSE(s.Add(base[0]).ok());
  }
}

// --- rpc/wire.h: bulk framing, checked against protobuf's own serializer and parser.

std::string Flatten(const grpc::ByteBuffer& b) {
  std::vector<grpc::Slice> slices;
  EXPECT_TRUE(b.Dump(&slices).ok());
  std::string out;
  for (const grpc::Slice& s : slices) out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return out;
}

// `bytes` cut into slices of `piece` bytes, as gRPC may deliver them.
grpc::ByteBuffer Sliced(const std::string& bytes, size_t piece) {
  std::vector<grpc::Slice> slices;
  for (size_t i = 0; i < bytes.size(); i += piece)
    slices.emplace_back(bytes.data() + i, std::min(piece, bytes.size() - i));
  return grpc::ByteBuffer(slices.data(), slices.size());
}

std::string PiecesString(const DataPieces& d) {
  std::string out;
  for (auto p : d.pieces) out.append(reinterpret_cast<const char*>(p.data()), p.size());
  EXPECT_EQ(out.size(), d.size);
  return out;
}

v1::LoadModelStreamRequest ChunkMessage(const v1::TensorChunk& chunk) {
  v1::LoadModelStreamRequest m;
  *m.mutable_chunk() = chunk;
  return m;
}

TEST(Wire, EncodedChunksAreTheProtobufMessages) {
  Tensor a = Iota(1000);
  auto keep = std::make_shared<const Tensor>(a);
  std::vector<v1::TensorChunk> expected = Chunks("a", a, 1500);
  size_t i = 0;
  ForEachChunk("a", a, 1500, [&](const v1::TensorChunk& meta, std::span<const uint8_t> data) {
    const std::string wire = Flatten(EncodeWithBulk(meta, kLoadChunkData, data, keep));
    v1::LoadModelStreamRequest parsed;
    EXPECT_TRUE(parsed.ParseFromString(wire));
    EXPECT_EQ(parsed.SerializeAsString(), ChunkMessage(expected[i]).SerializeAsString()) << "chunk " << i;
    ++i;
    return true;
  });
  EXPECT_EQ(i, expected.size());
  v1::UploadModelRequest up;
  up.set_file_name("f");
  up.set_file_last(true);
  const std::string payload = "file bytes";
  const std::string wire = Flatten(EncodeWithBulk(
      up, kUploadModelData, std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(payload.data()), payload.size()),
      nullptr));
  v1::UploadModelRequest parsed;
  ASSERT_TRUE(parsed.ParseFromString(wire));
  EXPECT_EQ(parsed.data(), payload);
  EXPECT_TRUE(parsed.file_last());
}

TEST(Wire, DecodesProtobufBytesSplitAnywhere) {
  Tensor a = Iota(300);
  for (const v1::TensorChunk& c : Chunks("a", a, 512)) {
    v1::FetchResultResponse msg;
    *msg.mutable_chunk() = c;
    const std::string bytes = msg.SerializeAsString();
    for (size_t piece : {size_t{1}, size_t{3}, size_t{64}, bytes.size()}) {
      v1::FetchResultResponse got;
      SplitMessage split;
      ASSERT_TRUE(DecodeWithBulk(Sliced(bytes, piece), kResultChunkData, &got, &split).ok()) << piece;
      EXPECT_TRUE(got.chunk().data().empty());
      EXPECT_EQ(PiecesString(split.data), c.data());
      got.mutable_chunk()->set_data(PiecesString(split.data));
      EXPECT_EQ(got.SerializeAsString(), bytes);
    }
  }
  // A header (no bulk field) passes through whole.
  v1::FetchResultResponse header;
  header.mutable_header()->set_config_json("{}");
  header.mutable_header()->set_tensors(3);
  v1::FetchResultResponse got;
  SplitMessage split;
  ASSERT_TRUE(DecodeWithBulk(Sliced(header.SerializeAsString(), 2), kResultChunkData, &got, &split).ok());
  EXPECT_EQ(got.header().tensors(), 3);
  EXPECT_EQ(split.data.size, 0u);
}

// Protobuf's oneof rule: a header after a chunk clears the chunk, data included; a chunk after
// that starts empty. The splitter must not carry the first chunk's data over to the second.
TEST(Wire, HeaderBetweenChunksDropsTheFirstChunksDataAsProtobufDoes) {
  v1::FetchResultResponse first, header, second;
  first.mutable_chunk()->set_name("a");
  first.mutable_chunk()->set_data("0123456789");
  header.mutable_header()->set_tensors(1);
  second.mutable_chunk()->set_offset(10);
  const std::string bytes = first.SerializeAsString() + header.SerializeAsString() + second.SerializeAsString();
  v1::FetchResultResponse want;
  ASSERT_TRUE(want.ParseFromString(bytes));
  ASSERT_TRUE(want.chunk().data().empty());
  v1::FetchResultResponse got;
  SplitMessage split;
  ASSERT_TRUE(DecodeWithBulk(Sliced(bytes, 5), kResultChunkData, &got, &split).ok());
  EXPECT_EQ(split.data.size, 0u);
  EXPECT_EQ(got.SerializeAsString(), want.SerializeAsString());
}

// The same for FetchResultResponse's third oneof member, a side file's piece (field 3): found by
// fuzz_wire (a chunk's data survived a later `file` and a chunk after it). In
// LoadModelStreamRequest field 3 is unknown to protobuf: the oneof does not switch and the
// chunk keeps its data.
TEST(Wire, FileBetweenChunksDropsTheFirstChunksDataAsProtobufDoes) {
  v1::FetchResultResponse first, file, second;
  first.mutable_chunk()->set_name("a");
  first.mutable_chunk()->set_data("0123456789");
  file.mutable_file()->set_name("tokenizer.json");
  second.mutable_chunk()->set_offset(10);
  for (const std::string& bytes : {first.SerializeAsString() + file.SerializeAsString(),
                                   first.SerializeAsString() + file.SerializeAsString() + second.SerializeAsString()}) {
    v1::FetchResultResponse want;
    ASSERT_TRUE(want.ParseFromString(bytes));
    v1::FetchResultResponse got;
    SplitMessage split;
    ASSERT_TRUE(DecodeWithBulk(Sliced(bytes, 5), kResultChunkData, &got, &split).ok());
    EXPECT_EQ(split.data.size, 0u);
    EXPECT_EQ(got.SerializeAsString(), want.SerializeAsString());
  }
  const std::string load_bytes = first.SerializeAsString() + file.SerializeAsString();
  v1::LoadModelStreamRequest want;
  ASSERT_TRUE(want.ParseFromString(load_bytes));
  ASSERT_EQ(want.chunk().data(), "0123456789");
  v1::LoadModelStreamRequest got;
  SplitMessage split;
  ASSERT_TRUE(DecodeWithBulk(Sliced(load_bytes, 5), kLoadChunkData, &got, &split).ok());
  ASSERT_EQ(split.data.size, 10u);
  got.mutable_chunk()->set_data(PiecesString(split.data));
  EXPECT_EQ(got.SerializeAsString(), want.SerializeAsString());
}

TEST(Wire, AssemblesTensorsFromSlicedMessages) {
  Tensor a = Iota(1000);
  ChunkAssembler assembler;
  for (const v1::TensorChunk& c : Chunks("a", a, 700)) {
    v1::FetchResultResponse got;
    SplitMessage split;
    ASSERT_TRUE(DecodeWithBulk(Sliced(ChunkMessage(c).SerializeAsString(), 97), kResultChunkData, &got, &split).ok());
    ASSERT_TRUE(assembler.Add(got.chunk(), split.data).ok());
  }
  ASSERT_TRUE(assembler.Finish().ok());
  const Tensor& r = assembler.tensors().at("a");
  EXPECT_TRUE(std::equal(r.bytes().begin(), r.bytes().end(), a.bytes().begin()));
}

TEST(Wire, FlippedDataByteIsDataLossNamingTheTensor) {
  Tensor a = Iota(256);
  ChunkAssembler assembler;
  absl::Status st;
  for (const v1::TensorChunk& c : Chunks("layer.weight", a, 300)) {
    std::string bytes = ChunkMessage(c).SerializeAsString();
    bytes[bytes.size() / 2] ^= 0x10;  // inside the data
    v1::LoadModelStreamRequest got;
    SplitMessage split;
    ASSERT_TRUE(DecodeWithBulk(Sliced(bytes, 50), kLoadChunkData, &got, &split).ok());
    if (st.ok()) st = assembler.Add(got.chunk(), split.data);
  }
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << st;
  EXPECT_NE(st.message().find("tensor 'layer.weight': CRC-32C mismatch"), std::string::npos) << st;
}

TEST(Wire, RefusesMalformedBytes) {
  auto decode = [](const std::string& bytes) {
    v1::FetchResultResponse got;
    SplitMessage split;
    return DecodeWithBulk(Sliced(bytes, 5), kResultChunkData, &got, &split);
  };
  v1::FetchResultResponse msg;
  *msg.mutable_chunk() = Chunks("a", Iota(40), 1 << 20)[0];
  const std::string good = msg.SerializeAsString();
  ASSERT_TRUE(decode(good).ok());
  // Every truncation inside the one top-level field: a cut tag, length or payload.
  for (size_t n = 1; n < good.size(); ++n) {
    absl::Status st = decode(good.substr(0, n));
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << n;
    EXPECT_NE(st.message().find("malformed message"), std::string::npos) << st;
  }
  struct Case {
    std::string bytes, why;
  };
  const std::string chunk_with_varint_data = std::string("\x12\x02\x28\x01", 4);  // chunk { 5: varint 1 }
  for (const Case& c : std::vector<Case>{
           {chunk_with_varint_data, "expected length-delimited"},
           {std::string("\x10\x01", 2), "expected length-delimited"},  // chunk as a varint
           {std::string("\x0b\x0c", 2), "groups are not supported"},   // field 1, start group
           {std::string("\x0e\x00", 2), "wire type 6 (not a wire type)"},
           {std::string("\x08") + std::string(10, '\xff') + "\x01", "truncated varint"},  // 11-byte varint
           {std::string("\x00\x01", 2), "field number 0"},
           {std::string("\x12\x7f\x0a\x01", 4), "says 127 bytes, but 2 remain"},
           {std::string("\x12\x03\x0a\x05\x61", 5), "says 5 bytes, but 1 remain"},  // nested name past the chunk
           {std::string("\x12\x02\x0a\x01", 4), "says 1 bytes, but 0 remain"},      // name past the chunk's end
           {std::string("\x80"), "truncated field tag"},
       }) {
    absl::Status st = decode(c.bytes);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << c.why;
    EXPECT_NE(st.message().find(c.why), std::string::npos) << st;
  }
  // Well-formed wire bytes that protobuf refuses: a string that is not UTF-8.
  absl::Status st = decode(std::string("\x12\x03\x0a\x01\xff", 5));
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("not a valid lowbit.v1.FetchResultResponse"), std::string::npos) << st;
}

TEST(Status, MapsCodesBothWays) {
  auto g = ToGrpcStatus(absl::ResourceExhaustedError("too big"));
  EXPECT_EQ(g.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(g.error_message(), "too big");
  EXPECT_EQ(FromGrpcStatus(grpc::Status(grpc::StatusCode::NOT_FOUND, "x")).code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
}

// A service whose one method goes through CallGuard, so auth and metrics are exercised as the
// real services use them.
class InfoService final : public v1::RuntimeService::Service {
 public:
  explicit InfoService(ServiceContext ctx) : ctx_(std::move(ctx)) {}
  grpc::Status GetServerInfo(grpc::ServerContext* ctx, const v1::GetServerInfoRequest*,
                             v1::GetServerInfoResponse* resp) override {
    CallGuard guard(ctx, ctx_, "GetServerInfo");
    if (!guard.ok()) return guard.Finish(guard.auth_status());
    resp->set_version("test");
    return guard.Finish(grpc::Status::OK);
  }
  // Waits for the client to go (deadline or cancel), then reports why with CallEnded.
  grpc::Status ListModels(grpc::ServerContext* ctx, const v1::ListModelsRequest*, v1::ListModelsResponse*) override {
    while (!ctx->IsCancelled()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    std::lock_guard<std::mutex> lock(mu);
    ended = CallEnded(ctx, "ListModels");
    return grpc::Status(grpc::StatusCode::CANCELLED, "gone");
  }
  absl::Status Ended() {  // OK until a ListModels call ended
    std::lock_guard<std::mutex> lock(mu);
    return ended;
  }
  ServiceContext ctx_;
  std::mutex mu;
  absl::Status ended;
};

struct TestServer {
  explicit TestServer(ServerConfig config) {
    auto registry = std::make_shared<prometheus::Registry>();
    service = std::make_unique<InfoService>(MakeServiceContext(config, "runtime", registry));
    auto s = RpcServer::Start(config, {service.get()}, registry);
    status = s.status();
    if (s.ok()) server = std::move(*s);
  }
  std::unique_ptr<InfoService> service;
  std::unique_ptr<RpcServer> server;
  absl::Status status;
};

grpc::Status Info(const ClientConfig& cc, std::string* version = nullptr) {
  auto ch = MakeChannel(cc);
  if (!ch.ok()) return ToGrpcStatus(ch.status());
  auto stub = v1::RuntimeService::NewStub(*ch);
  grpc::ClientContext ctx;
  PrepareContext(&ctx, cc, std::chrono::seconds(5));
  v1::GetServerInfoRequest req;
  v1::GetServerInfoResponse resp;
  auto st = stub->GetServerInfo(&ctx, req, &resp);
  if (version) *version = resp.version();
  return st;
}

grpc::health::v1::HealthCheckResponse::ServingStatus Health(const ClientConfig& cc, grpc::Status* st,
                                                            const std::string& service = "") {
  auto ch = MakeChannel(cc);
  auto stub = grpc::health::v1::Health::NewStub(*ch);
  grpc::ClientContext ctx;
  PrepareContext(&ctx, ClientConfig{}, std::chrono::seconds(5));  // no token: health stays open
  grpc::health::v1::HealthCheckRequest req;
  req.set_service(service);
  grpc::health::v1::HealthCheckResponse resp;
  *st = stub->Check(&ctx, req, &resp);
  return resp.status();
}

TEST(Server, HealthAuthMetricsAndShutdown) {
  ServerConfig config;
  config.auth_token = "s3cret";
  config.metrics_address = "127.0.0.1:0";
  config.shutdown_grace = std::chrono::milliseconds(200);
  TestServer ts(config);
  ASSERT_TRUE(ts.status.ok()) << ts.status;
  ASSERT_GT(ts.server->port(), 0);
  ClientConfig cc;
  cc.address = "127.0.0.1:" + std::to_string(ts.server->port());

  grpc::Status hs;
  EXPECT_EQ(Health(cc, &hs), grpc::health::v1::HealthCheckResponse::SERVING);
  EXPECT_TRUE(hs.ok()) << hs.error_message();
  // A service name answers once added (grpc_health_probe -service=...), an unknown one is NOT_FOUND.
  Health(cc, &hs, "lowbit.v1.RuntimeService");
  EXPECT_EQ(hs.error_code(), grpc::StatusCode::NOT_FOUND);
  ts.server->AddHealthService("lowbit.v1.RuntimeService");
  EXPECT_EQ(Health(cc, &hs, "lowbit.v1.RuntimeService"), grpc::health::v1::HealthCheckResponse::SERVING);
  EXPECT_TRUE(hs.ok()) << hs.error_message();

  auto missing = Info(cc);
  EXPECT_EQ(missing.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_NE(missing.error_message().find("authorization"), std::string::npos);
  cc.auth_token = "s3creT";
  EXPECT_EQ(Info(cc).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  cc.auth_token = "s3cret";
  std::string version;
  EXPECT_TRUE(Info(cc, &version).ok());
  EXPECT_EQ(version, "test");

  // /metrics counts the three calls by code (16 = UNAUTHENTICATED, 0 = OK).
  ASSERT_GT(ts.server->metrics_port(), 0);
  const std::string out = ::testing::TempDir() + "/metrics.txt";
  const std::string cmd = "curl -s http://127.0.0.1:" + std::to_string(ts.server->metrics_port()) + "/metrics > " + out;
  if (std::system(cmd.c_str()) == 0) {
    std::ifstream in(out);
    std::string text((std::istreambuf_iterator<char>(in)), {});
    EXPECT_NE(text.find("lowbit_rpc_requests_total{code=\"16\",method=\"GetServerInfo\",service=\"runtime\"} 2"),
              std::string::npos)
        << text;
    EXPECT_NE(text.find("lowbit_rpc_requests_total{code=\"0\",method=\"GetServerInfo\",service=\"runtime\"} 1"),
              std::string::npos)
        << text;
  } else {
    ADD_FAILURE() << "curl could not fetch /metrics";
  }

  ts.server->Shutdown();
  ts.server->Wait();
  EXPECT_EQ(Info(cc).error_code(), grpc::StatusCode::UNAVAILABLE);
}

// A call whose deadline passed is DEADLINE_EXCEEDED for the server's logs and metrics, one the
// client cancelled is CANCELLED.
TEST(Server, CallEndedTellsDeadlineFromCancel) {
  TestServer ts(ServerConfig{});
  ASSERT_TRUE(ts.status.ok()) << ts.status;
  ClientConfig cc;
  cc.address = "127.0.0.1:" + std::to_string(ts.server->port());
  auto ch = MakeChannel(cc);
  ASSERT_TRUE(ch.ok());
  auto stub = v1::RuntimeService::NewStub(*ch);
  v1::ListModelsRequest req;
  v1::ListModelsResponse resp;
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(100));
    EXPECT_EQ(stub->ListModels(&ctx, req, &resp).error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  }
  for (int i = 0; i < 200 && ts.service->Ended().ok(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  absl::Status ended = ts.service->Ended();
  EXPECT_EQ(ended.code(), absl::StatusCode::kDeadlineExceeded) << ended;
  EXPECT_NE(ended.message().find("ListModels: the call's deadline passed"), std::string::npos) << ended;
  {
    std::lock_guard<std::mutex> lock(ts.service->mu);
    ts.service->ended = absl::OkStatus();
  }
  {
    grpc::ClientContext ctx;
    std::thread cancel([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      ctx.TryCancel();
    });
    EXPECT_EQ(stub->ListModels(&ctx, req, &resp).error_code(), grpc::StatusCode::CANCELLED);
    cancel.join();
  }
  for (int i = 0; i < 200 && ts.service->Ended().ok(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(ts.service->Ended().code(), absl::StatusCode::kCancelled) << ts.service->Ended();
}

// The address a server prints for its launchers: the bound port for port 0, a unix socket as given
// (gRPC's own port for it is 1), and clients reach it there.
TEST(Server, ListeningAddressIsWhereClientsConnect) {
  ServerConfig tcp;
  tcp.address = "127.0.0.1:0";
  TestServer a(tcp);
  ASSERT_TRUE(a.status.ok()) << a.status;
  EXPECT_EQ(a.server->listening_address(), "127.0.0.1:" + std::to_string(a.server->port()));
  const std::string sock = ::testing::TempDir() + "/lowbit_rpc_test_" + std::to_string(getpid()) + ".sock";
  ServerConfig unix_config;
  unix_config.address = "unix:" + sock;
  TestServer u(unix_config);
  ASSERT_TRUE(u.status.ok()) << u.status;
  EXPECT_EQ(u.server->listening_address(), "unix:" + sock);
  for (const TestServer* s : {&a, &u}) {
    ClientConfig cc;
    cc.address = s->server->listening_address();
    EXPECT_TRUE(Info(cc).ok()) << cc.address;
  }
}

TEST(Server, RefusesPortInUseAndBadTls) {
  ServerConfig config;
  TestServer first(config);
  ASSERT_TRUE(first.status.ok());
  config.address = "127.0.0.1:" + std::to_string(first.server->port());
  TestServer second(config);
  EXPECT_EQ(second.status.code(), absl::StatusCode::kUnavailable) << second.status;
  ServerConfig tls;
  tls.tls_cert_file = "/nonexistent/cert.pem";
  tls.tls_key_file = "/nonexistent/key.pem";
  TestServer third(tls);
  EXPECT_EQ(third.status.code(), absl::StatusCode::kNotFound);
  EXPECT_NE(third.status.message().find("/nonexistent/cert.pem"), std::string::npos);
  // gRPC would listen on 99999 mod 65536.
  for (const char* address : {"127.0.0.1:99999", "127.0.0.1:http", "127.0.0.1"}) {
    ServerConfig bad;
    bad.address = address;
    TestServer refused(bad);
    EXPECT_EQ(refused.status.code(), absl::StatusCode::kInvalidArgument) << address;
    EXPECT_NE(refused.status.message().find("0..65535"), std::string::npos) << refused.status;
  }
  ServerConfig bad_metrics;
  bad_metrics.metrics_address = "127.0.0.1:70000";
  TestServer refused(bad_metrics);
  EXPECT_EQ(refused.status.code(), absl::StatusCode::kInvalidArgument) << refused.status;
}

// Threads that a shared library creates with a fixed small stack — civetweb's, behind /metrics,
// 100 KiB — must still fit the static TLS of the CUDA libraries the runtime links (≈ 110 KiB):
// the executable's pthread_attr_setstacksize (rpc/thread_stack_floor.cc) is the one the global
// lookup finds, not glibc's, and it raises the request to the floor.
TEST(Server, ThreadStacksHaveAFloorForSharedLibraries) {
  using SetStackSize = int (*)(pthread_attr_t*, size_t);
  auto global = reinterpret_cast<SetStackSize>(dlsym(RTLD_DEFAULT, "pthread_attr_setstacksize"));
  void* libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
  ASSERT_NE(libc, nullptr);
  auto glibc = reinterpret_cast<SetStackSize>(dlsym(libc, "pthread_attr_setstacksize"));
  dlclose(libc);
  ASSERT_NE(global, nullptr);
  ASSERT_NE(glibc, nullptr);
  EXPECT_NE(global, glibc) << "the executable does not export its pthread_attr_setstacksize";
  pthread_attr_t attr;
  ASSERT_EQ(pthread_attr_init(&attr), 0);
  ASSERT_EQ(global(&attr, 100 * 1024), 0);
  size_t got = 0;
  ASSERT_EQ(pthread_attr_getstacksize(&attr, &got), 0);
  EXPECT_EQ(got, kMinThreadStackBytes);
  ASSERT_EQ(global(&attr, 8 * kMinThreadStackBytes), 0);  // larger requests stand
  ASSERT_EQ(pthread_attr_getstacksize(&attr, &got), 0);
  EXPECT_EQ(got, 8 * kMinThreadStackBytes);
  pthread_attr_destroy(&attr);
}

// mTLS with certificates made by the openssl command line: a CA, a server certificate for
// localhost, a client certificate. Without a client certificate the handshake fails.
TEST(Server, MutualTls) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::path(::testing::TempDir()) / "lowbit_rpc_tls";
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string d = dir.string();
  const std::string script =
      "cd " + d +
      " && "
      "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=lowbit-test-ca -keyout ca.key -out ca.pem && "
      "openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout server.key -out server.csr && "
      "printf 'subjectAltName=DNS:localhost,IP:127.0.0.1' > san.ext && "
      "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile san.ext -out "
      "server.pem && "
      "openssl req -newkey rsa:2048 -nodes -subj /CN=client -keyout client.key -out client.csr && "
      "openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -out client.pem";
  ASSERT_EQ(std::system(("(" + script + ") > " + d + "/openssl.log 2>&1").c_str()), 0)
      << "openssl failed; see " << d << "/openssl.log";
  ServerConfig config;
  config.tls_cert_file = d + "/server.pem";
  config.tls_key_file = d + "/server.key";
  config.tls_client_ca_file = d + "/ca.pem";
  TestServer ts(config);
  ASSERT_TRUE(ts.status.ok()) << ts.status;
  ClientConfig cc;
  cc.address = "localhost:" + std::to_string(ts.server->port());
  cc.tls_ca_file = d + "/ca.pem";
  EXPECT_EQ(Info(cc).error_code(), grpc::StatusCode::UNAVAILABLE);  // no client certificate
  cc.tls_cert_file = d + "/client.pem";
  cc.tls_key_file = d + "/client.key";
  // A key that is not the certificate's, and a file that is not PEM, are named.
  ServerConfig wrong_key = config;
  wrong_key.tls_key_file = d + "/client.key";
  TestServer refused_key(wrong_key);
  EXPECT_EQ(refused_key.status.code(), absl::StatusCode::kInvalidArgument) << refused_key.status;
  EXPECT_NE(refused_key.status.message().find("client.key' is not the private key of the certificate"),
            std::string::npos)
      << refused_key.status;
  ServerConfig not_pem = config;
  not_pem.tls_cert_file = d + "/san.ext";
  TestServer refused_cert(not_pem);
  EXPECT_EQ(refused_cert.status.code(), absl::StatusCode::kInvalidArgument) << refused_cert.status;
  EXPECT_NE(refused_cert.status.message().find("san.ext' holds no PEM certificate"), std::string::npos)
      << refused_cert.status;
  ServerConfig not_pem_ca = config;
  not_pem_ca.tls_client_ca_file = d + "/san.ext";
  TestServer refused_ca(not_pem_ca);
  EXPECT_NE(refused_ca.status.message().find("TLS client CA '" + d + "/san.ext' holds no PEM certificate"),
            std::string::npos)
      << refused_ca.status;
  // The client checks its files too: a CA that is not PEM, a key that is not the certificate's.
  ClientConfig bad_ca = cc;
  bad_ca.tls_ca_file = d + "/san.ext";
  absl::StatusOr<std::shared_ptr<grpc::Channel>> ch = MakeChannel(bad_ca);
  EXPECT_NE(ch.status().message().find("TLS CA '" + d + "/san.ext' holds no PEM certificate"), std::string::npos)
      << ch.status();
  ClientConfig bad_key = cc;
  bad_key.tls_key_file = d + "/server.key";
  ch = MakeChannel(bad_key);
  EXPECT_NE(ch.status().message().find("server.key' is not the private key of the certificate"), std::string::npos)
      << ch.status();
  std::string version;
  auto st = Info(cc, &version);
  EXPECT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(version, "test");
  ClientConfig plain;
  plain.address = cc.address;
  EXPECT_FALSE(Info(plain).ok());  // plaintext against a TLS port
}

}  // namespace
}  // namespace lowbit::rpc
