// libFuzzer target for rpc::ChunkAssembler (rpc/tensor_codec.h), which checks the tensor chunk
// streams clients send to LoadModelStream and that FetchResult's readers reassemble. The input
// drives a generator of chunks (so that streams with correct offsets and CRC-32Cs, which random
// bytes would almost never hit, are as common as broken ones): per chunk, an op byte picks the
// tensor name, whether the chunk starts a tensor (dtype and shape from the next bytes, sizes up
// to a few KB with the odd negative or huge dimension), a wrong offset, the last flag and a
// wrong CRC; then a length byte and that many data bytes. Checks:
//   * every refusal is INVALID_ARGUMENT, DATA_LOSS or RESOURCE_EXHAUSTED; never a crash (ASan /
//     UBSan in the fuzz build);
//   * differential: an assembler that holds every tensor and one that holds none (its chunks
//     passed on: the runtime's tensors no quantized Linear reads) accept and refuse the same
//     chunks with the same status, and each tensor's passed bytes, put together at their
//     offsets, equal the held tensor's bytes, whose count is its dtype size × shape.
#include <cstdint>
#include <cstdlib>
#include <map>
#include <string>

#include "lowbit/v1/tensor.pb.h"
#include "rpc/crc32c.h"
#include "rpc/tensor_codec.h"
#include "rpc/wire.h"

namespace {

using lowbit::rpc::ChunkAssembler;
using lowbit::rpc::DataPieces;

struct Input {
  const uint8_t* p;
  size_t n;
  uint8_t Byte() {
    if (n == 0) return 0;
    --n;
    return *p++;
  }
};

int64_t Dim(uint8_t b) {
  if (b == 250) return -1;
  if (b == 251) return int64_t{1} << 40;
  if (b == 252) return INT64_MAX;
  return b % 9;
}

void Expect(bool ok) {
  if (!ok) std::abort();
}

bool SameStatus(const absl::Status& a, const absl::Status& b) {
  return a.code() == b.code() && a.message() == b.message();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Input in{data, size};
  lowbit::rpc::TensorLimits limits;
  limits.max_bytes = 1 << 16;
  limits.budget_bytes = 6000;
  std::map<std::string, std::string> held, passed;
  ChunkAssembler::Hooks hold_all;
  hold_all.take = [&](const std::string& name, lowbit::Tensor t) {
    int64_t elements = 1;
    for (int64_t d : t.shape()) elements *= d;
    Expect(t.bytes().size() == static_cast<size_t>(elements) * lowbit::DTypeSize(t.dtype()));
    held[name].assign(reinterpret_cast<const char*>(t.bytes().data()), t.bytes().size());
    return absl::OkStatus();
  };
  ChunkAssembler::Hooks hold_none;
  hold_none.hold = [](const std::string&) { return false; };
  hold_none.take = [](const std::string&, lowbit::Tensor) {
    std::abort();  // a declined tensor is never handed over
    return absl::OkStatus();
  };
  hold_none.pass = [&](const std::string& name, int64_t offset, const DataPieces& d) {
    std::string& dst = passed[name];
    Expect(offset == static_cast<int64_t>(dst.size()));  // in order, without gaps
    size_t total = 0;
    for (auto piece : d.pieces) {
      dst.append(reinterpret_cast<const char*>(piece.data()), piece.size());
      total += piece.size();
    }
    Expect(total == d.size);
    return absl::OkStatus();
  };
  ChunkAssembler a(limits, hold_all), b(limits, hold_none);
  static const char* const kNames[] = {"a", "b", "c", ""};
  uint32_t crc = 0;  // of the generator's current tensor, for chunks that carry a right CRC
  int64_t sent = 0;
  absl::Status sa, sb;
  for (int step = 0; step < 64 && in.n > 0 && sa.ok(); ++step) {
    const uint8_t op = in.Byte();
    lowbit::v1::TensorChunk chunk;
    chunk.set_name(kNames[op & 3]);
    if (op & 4) {  // starts a tensor
      chunk.set_dtype(static_cast<lowbit::v1::DType>(in.Byte() % 10));
      const int rank = in.Byte() % 4;
      for (int r = 0; r < rank; ++r) chunk.add_shape(Dim(in.Byte()));
      crc = 0;
      sent = 0;
    }
    chunk.set_offset((op & 8) ? static_cast<int64_t>(in.Byte()) - 8 : sent);
    const size_t len = std::min<size_t>(in.Byte(), in.n);
    chunk.set_data(reinterpret_cast<const char*>(in.p), len);
    in.p += len;
    in.n -= len;
    crc = lowbit::rpc::Crc32c(chunk.data().data(), len, crc);
    sent += static_cast<int64_t>(len);
    chunk.set_last(op & 16);
    chunk.set_crc32c((op & 32) ? crc ^ (1u + in.Byte()) : crc);
    sa = a.Add(chunk);
    sb = b.Add(chunk);
    Expect(SameStatus(sa, sb));
  }
  if (sa.ok()) {
    sa = a.Finish();
    sb = b.Finish();
    Expect(SameStatus(sa, sb));
  }
  if (!sa.ok()) {
    const auto code = sa.code();
    Expect(code == absl::StatusCode::kInvalidArgument || code == absl::StatusCode::kDataLoss ||
           code == absl::StatusCode::kResourceExhausted);
  }
  Expect(a.received() == b.received());
  Expect(a.received() == held.size());
  Expect(b.tensors().empty());
  // Every tensor the holding assembler completed was passed on whole by the other.
  for (const auto& [name, bytes] : held) Expect(passed.count(name) == 1 && passed[name] == bytes);
  return 0;
}
