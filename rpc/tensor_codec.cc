#include "rpc/tensor_codec.h"

#include <algorithm>
#include <map>
#include <mutex>
#include <span>

#include "absl/strings/str_cat.h"
#include "rpc/crc32c.h"

namespace lowbit::rpc {
namespace {

absl::StatusOr<int64_t> CheckedBytes(DType dtype, const Shape& shape, const std::string& what,
                                     const TensorLimits& limits) {
  if (static_cast<int>(shape.size()) > limits.max_rank) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": rank ", shape.size(), " is over the limit of ", limits.max_rank));
  }
  const int64_t elem = static_cast<int64_t>(DTypeSize(dtype));
  int64_t bytes = elem;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": dimension ", i, " is negative (", shape[i], ") in shape ", ShapeString(shape)));
    }
    if (shape[i] != 0 && bytes > limits.max_bytes / shape[i]) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": shape ", ShapeString(shape), " of ",
                                                     std::string(DTypeName(dtype)), " is over the ", limits.max_bytes,
                                                     "-byte limit"));
    }
    bytes *= shape[i];
  }
  if (bytes > limits.max_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": ", bytes, " bytes is over the ", limits.max_bytes, "-byte limit"));
  }
  return bytes;
}

// Memory for the tensors being received, not zeroed: the assembler overwrites every byte before
// a tensor is handed out (zeroing it first, as Tensor::Zeros does, cost a pass over the memory).
// (Transparent huge pages, madvise'd, made a first fetch faster but later ones slower: with
// defrag=madvise the page faults wait for compaction.)
//
// Large buffers are kept for reuse while any ChunkAssembler is receiving (constructed, not yet
// finished). Below kPooledBytes glibc's heap keeps freed memory and hands it out again
// (rpc::SetUpProcess); above it every allocation is a fresh mmap whose pages fault in, zeroed by
// the kernel, and every free unmaps it. A stream that drops its tensors as it goes — the runtime's
// streamed load prepares each layer and frees its tensors — would fault in every layer's large
// tensors anew; instead a freed large buffer goes to the next tensor that fits it (at most 1/8
// larger than asked), up to kMaxKeptBytes kept. When the last receiving assembler finishes or
// goes, everything kept is freed.
class ReceivePool {
 public:
  static constexpr size_t kPooledBytes = size_t{32} << 20;  // glibc's largest mmap threshold
  static constexpr size_t kMaxKeptBytes = size_t{1} << 30;

  static ReceivePool& Get() {
    static ReceivePool* pool = new ReceivePool();  // never destroyed: buffers may outlive main
    return *pool;
  }

  std::shared_ptr<uint8_t> Take(size_t n) {
    if (n < kPooledBytes) return std::shared_ptr<uint8_t>(new uint8_t[n], std::default_delete<uint8_t[]>());
    uint8_t* p = nullptr;
    size_t size = n;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (auto it = kept_.lower_bound(n); it != kept_.end() && it->first <= n + n / 8) {
        p = it->second;
        size = it->first;
        kept_bytes_ -= size;
        kept_.erase(it);
      }
    }
    if (p == nullptr) p = new uint8_t[n];
    return std::shared_ptr<uint8_t>(p, [this, size](uint8_t* q) { Give(q, size); });
  }

  void AssemblerBorn() {
    std::lock_guard<std::mutex> lock(mu_);
    ++assemblers_;
  }
  void AssemblerGone() {
    std::multimap<size_t, uint8_t*> drop;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (--assemblers_ > 0) return;
      drop.swap(kept_);
      kept_bytes_ = 0;
    }
    for (auto& [size, p] : drop) delete[] p;
  }

 private:
  void Give(uint8_t* p, size_t size) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (assemblers_ > 0 && kept_bytes_ + size <= kMaxKeptBytes) {
        kept_.emplace(size, p);
        kept_bytes_ += size;
        return;
      }
    }
    delete[] p;
  }

  std::mutex mu_;
  std::multimap<size_t, uint8_t*> kept_;  // size -> buffer
  size_t kept_bytes_ = 0;
  int assemblers_ = 0;
};

}  // namespace

absl::StatusOr<Manifest> Manifest::FromProto(const google::protobuf::RepeatedPtrField<v1::TensorInfo>& infos,
                                             const TensorLimits& limits) {
  Manifest m;
  int64_t total = 0;
  for (const v1::TensorInfo& t : infos) {
    absl::StatusOr<DType> dtype = DTypeFromProto(t.dtype());
    if (!dtype.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("manifest tensor '", t.name(), "': ", dtype.status().message()));
    }
    Shape shape(t.shape().begin(), t.shape().end());
    absl::StatusOr<int64_t> bytes =
        CheckedBytes(*dtype, shape, absl::StrCat("manifest tensor '", t.name(), "'"), limits);
    if (!bytes.ok()) return bytes.status();
    total += *bytes;  // each ≤ max_bytes (2^34): no overflow before 2^29 tensors
    if (total > limits.budget_bytes) {
      return absl::ResourceExhaustedError(absl::StrCat("the header's manifest lists at least ", total,
                                                       " bytes of tensors (up to tensor '", t.name(), "'), over the ",
                                                       limits.budget_bytes, " bytes the receiver can hold"));
    }
    if (!m.index_.emplace(t.name(), m.entries_.size()).second) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", t.name(), "' is twice in the header's manifest"));
    }
    m.entries_.push_back({t.name(), *dtype, std::move(shape), *bytes, t.file()});
  }
  return m;
}

absl::Status Manifest::Check(const std::string& name, DType dtype, const Shape& shape) const {
  auto it = index_.find(name);
  if (it == index_.end()) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' is not in the header's manifest"));
  }
  const Entry& e = entries_[it->second];
  if (e.dtype != dtype || e.shape != shape) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor '", name, "' arrived with another dtype or shape than the header's manifest gives"));
  }
  return absl::OkStatus();
}

absl::StatusOr<DType> DTypeFromProto(v1::DType dtype) {
  switch (dtype) {
    case v1::DTYPE_F32: return DType::kF32;
    case v1::DTYPE_F16: return DType::kF16;
    case v1::DTYPE_BF16: return DType::kBF16;
    case v1::DTYPE_I8: return DType::kI8;
    case v1::DTYPE_U8: return DType::kU8;
    case v1::DTYPE_I32: return DType::kI32;
    case v1::DTYPE_I64: return DType::kI64;
    case v1::DTYPE_F8_E4M3: return DType::kF8E4M3;
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "dtype ", v1::DType_Name(dtype).empty() ? std::to_string(static_cast<int>(dtype)) : v1::DType_Name(dtype),
          " is not a tensor dtype (use DTYPE_F32, DTYPE_F16, DTYPE_BF16, DTYPE_I8, DTYPE_U8, DTYPE_I32, "
          "DTYPE_I64 or DTYPE_F8_E4M3)"));
  }
}

v1::DType DTypeToProto(DType dtype) {
  switch (dtype) {
    case DType::kF32: return v1::DTYPE_F32;
    case DType::kF16: return v1::DTYPE_F16;
    case DType::kBF16: return v1::DTYPE_BF16;
    case DType::kI8: return v1::DTYPE_I8;
    case DType::kU8: return v1::DTYPE_U8;
    case DType::kI32: return v1::DTYPE_I32;
    case DType::kI64: return v1::DTYPE_I64;
    case DType::kF8E4M3: return v1::DTYPE_F8_E4M3;
  }
  return v1::DTYPE_UNSPECIFIED;
}

absl::StatusOr<Tensor> TensorFromProto(const v1::Tensor& proto, const std::string& what,
                                       const TensorLimits& limits) {
  auto dtype = DTypeFromProto(proto.dtype());
  if (!dtype.ok()) return absl::InvalidArgumentError(absl::StrCat(what, ": ", dtype.status().message()));
  Shape shape(proto.shape().begin(), proto.shape().end());
  auto bytes = CheckedBytes(*dtype, shape, what, limits);
  if (!bytes.ok()) return bytes.status();
  if (static_cast<int64_t>(proto.data().size()) != *bytes) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": ", proto.data().size(), " data bytes, but shape ",
                                                   ShapeString(shape), " of ", std::string(DTypeName(*dtype)), " needs ",
                                                   *bytes));
  }
  return Tensor::FromBytes(*dtype, std::move(shape),
                           std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(proto.data().data()),
                                                    proto.data().size()));
}

void TensorToProto(const Tensor& tensor, v1::Tensor* proto) {
  proto->set_dtype(DTypeToProto(tensor.dtype()));
  proto->mutable_shape()->Assign(tensor.shape().begin(), tensor.shape().end());
  auto b = tensor.bytes();
  proto->set_data(b.data(), b.size());
}

bool ForEachChunk(const std::string& name, const Tensor& tensor, int64_t chunk_bytes,
                  const std::function<bool(const v1::TensorChunk& meta, std::span<const uint8_t> data)>& emit) {
  if (chunk_bytes <= 0) chunk_bytes = int64_t{1} << 20;
  auto bytes = tensor.bytes();
  const int64_t total = static_cast<int64_t>(bytes.size());
  uint32_t crc = 0;
  int64_t offset = 0;
  v1::TensorChunk chunk;
  chunk.set_name(name);
  chunk.set_dtype(DTypeToProto(tensor.dtype()));
  chunk.mutable_shape()->Assign(tensor.shape().begin(), tensor.shape().end());
  do {
    const int64_t n = std::min(chunk_bytes, total - offset);
    if (offset > 0) {  // dtype and shape travel in the first chunk only
      chunk.clear_dtype();
      chunk.clear_shape();
    }
    chunk.set_offset(offset);
    const auto data = bytes.subspan(static_cast<size_t>(offset), static_cast<size_t>(n));
    crc = Crc32c(data.data(), data.size(), crc);
    offset += n;
    if (offset == total) {
      chunk.set_last(true);
      chunk.set_crc32c(crc);
    }
    if (!emit(chunk, data)) return false;
  } while (offset < total);
  return true;
}

absl::Status ChunkReceiver::Add(const v1::TensorChunk& chunk, const DataPieces& data) {
  const std::string& name = chunk.name();
  if (!in_progress_) {
    if (name.empty()) return absl::InvalidArgumentError("tensor chunk without a name");
    if (seen_.count(name)) return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' sent twice"));
    if (chunk.offset() != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", name, "': first chunk has offset ", chunk.offset(), ", expected 0"));
    }
    auto dtype = DTypeFromProto(chunk.dtype());
    if (!dtype.ok()) return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "': ", dtype.status().message()));
    Shape shape(chunk.shape().begin(), chunk.shape().end());
    auto bytes = CheckedBytes(*dtype, shape, absl::StrCat("tensor '", name, "'"), limits_);
    if (!bytes.ok()) return bytes.status();
    if (total_bytes_ + *bytes > limits_.max_bytes) {
      return absl::ResourceExhaustedError(absl::StrCat("tensor '", name, "' takes the stream to ",
                                                       total_bytes_ + *bytes, " bytes, over the ",
                                                       limits_.max_bytes, "-byte limit"));
    }
    if (total_bytes_ + *bytes > limits_.budget_bytes) {
      return absl::ResourceExhaustedError(
          absl::StrCat("tensor '", name, "' (shape ", ShapeString(shape), " of ", std::string(DTypeName(*dtype)), ", ",
                       *bytes, " bytes) takes the stream to ", total_bytes_ + *bytes, " bytes, over the ",
                       limits_.budget_bytes, " bytes the receiver can hold"));
    }
    if (absl::Status s = sink_.Begin(name, *dtype, shape, *bytes); !s.ok()) return s;
    size_ = *bytes;
    current_name_ = name;
    received_ = 0;
    crc_ = 0;
    in_progress_ = true;
  } else if (name != current_name_) {
    return absl::InvalidArgumentError(absl::StrCat("chunk of tensor '", name, "' arrived before tensor '",
                                                   current_name_, "' was complete (", received_, " of ", size_,
                                                   " bytes)"));
  }
  if (chunk.offset() != received_) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "': chunk at offset ", chunk.offset(),
                                                   ", expected ", received_));
  }
  const int64_t n = static_cast<int64_t>(data.size);
  if (received_ + n > size_) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "': ", received_ + n,
                                                   " bytes received, but its shape holds ", size_));
  }
  absl::StatusOr<uint32_t> crc = sink_.Store(received_, data, crc_);
  if (!crc.ok()) return crc.status();
  crc_ = *crc;
  received_ += n;
  if (chunk.last()) {
    if (received_ != size_) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "': last chunk after ", received_,
                                                     " bytes, but its shape needs ", size_));
    }
    if (chunk.crc32c() != crc_) {
      return absl::DataLossError(absl::StrCat("tensor '", name, "': CRC-32C mismatch (sent ", chunk.crc32c(),
                                              ", received bytes give ", crc_, ")"));
    }
    total_bytes_ += size_;
    seen_.insert(current_name_);
    in_progress_ = false;
    if (absl::Status s = sink_.End(); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status ChunkReceiver::Finish() const {
  if (in_progress_) {
    return absl::InvalidArgumentError(absl::StrCat("stream ended inside tensor '", current_name_, "' (",
                                                   received_, " of ", size_, " bytes)"));
  }
  return absl::OkStatus();
}

ChunkAssembler::ChunkAssembler(TensorLimits limits, Hooks hooks)
    : receiver_(*this, limits), hooks_(std::move(hooks)) {
  ReceivePool::Get().AssemblerBorn();
}

ChunkAssembler::~ChunkAssembler() {
  done_.clear();
  buffer_.reset();
  if (receiving_) ReceivePool::Get().AssemblerGone();
}

absl::Status ChunkAssembler::Finish() {
  if (receiving_) {
    receiving_ = false;
    ReceivePool::Get().AssemblerGone();
  }
  return receiver_.Finish();
}

absl::Status ChunkAssembler::Begin(const std::string& name, DType dtype, const Shape& shape, int64_t bytes) {
  if (hooks_.check) {
    if (absl::Status s = hooks_.check(name, dtype, shape); !s.ok()) return s;
  }
  name_ = name;
  dtype_ = dtype;
  shape_ = shape;
  holding_ = !hooks_.hold || hooks_.hold(name);
  if (holding_) buffer_ = ReceivePool::Get().Take(static_cast<size_t>(bytes));
  return absl::OkStatus();
}

absl::StatusOr<uint32_t> ChunkAssembler::Store(int64_t offset, const DataPieces& data, uint32_t crc) {
  if (holding_) return data.CopyTo(buffer_.get() + offset, crc);
  if (hooks_.pass) {
    if (absl::Status s = hooks_.pass(name_, offset, data); !s.ok()) return s;
  }
  return data.Crc32c(crc);
}

absl::Status ChunkAssembler::End() {
  if (!holding_) return absl::OkStatus();
  const uint8_t* data = buffer_.get();
  Tensor t = Tensor::View(dtype_, std::move(shape_), data, std::move(buffer_));
  if (hooks_.take) return hooks_.take(name_, std::move(t));
  done_.emplace(name_, std::move(t));
  return absl::OkStatus();
}

}  // namespace lowbit::rpc
