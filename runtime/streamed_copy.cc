#include "runtime/streamed_copy.h"

#include <cstdio>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"

namespace lowbit::runtime {
namespace fs = std::filesystem;

absl::StatusOr<std::unique_ptr<StreamedCopy>> StreamedCopy::Begin(
    const std::string& base, const std::string& name, const std::string& config_json,
    const std::vector<SafetensorsModelWriter::Placement>& placements) {
  std::unique_ptr<StreamedCopy> c(new StreamedCopy(base, name, config_json));
  std::error_code ec;
  fs::remove_all(c->tmp_, ec);
  fs::create_directories(c->tmp_, ec);
  if (ec) return c->Fail(absl::InternalError(absl::StrCat("cannot create ", c->tmp_, ": ", ec.message())));
  if (!placements.empty()) {
    auto w = SafetensorsModelWriter::Create(c->tmp_, placements);
    if (!w.ok()) return c->Fail(w.status());
    c->writer_ = *std::move(w);
  }
  return c;
}

StreamedCopy::~StreamedCopy() {
  writer_.reset();  // removes its temp files
  if (!committed_) {
    std::error_code ec;
    fs::remove_all(tmp_, ec);
  }
}

absl::Status StreamedCopy::Fail(const absl::Status& s) const {
  return absl::Status(s.code(),
                      absl::StrCat("the state directory's copy of the streamed model (", dir_, "): ", s.message()));
}

absl::Status StreamedCopy::Write(const std::string& name, uint64_t offset, std::span<const uint8_t> bytes) {
  if (writer_ == nullptr) return Fail(absl::InternalError("tensors without a manifest go through AddAll"));
  if (absl::Status s = writer_->Write(name, offset, bytes); !s.ok()) return Fail(s);
  return absl::OkStatus();
}

absl::Status StreamedCopy::AddAll(const std::map<std::string, Tensor>& tensors) {
  if (writer_ != nullptr) return Fail(absl::InternalError("a manifest's tensors go through Add"));
  std::vector<SafetensorsModelWriter::Placement> placements;
  for (const auto& [name, t] : tensors) placements.push_back({name, t.dtype(), t.shape(), kTensorFile});
  auto w = SafetensorsModelWriter::Create(tmp_, placements);
  if (!w.ok()) return Fail(w.status());
  writer_ = *std::move(w);
  for (const auto& [name, t] : tensors) {
    if (absl::Status s = writer_->Write(name, 0, t.bytes()); !s.ok()) return Fail(s);
  }
  return absl::OkStatus();
}

absl::Status StreamedCopy::Sync() {
  if (synced_) return absl::OkStatus();
  if (writer_ == nullptr) return Fail(absl::InternalError("no tensors were written"));
  if (absl::Status s = writer_->AddFile("config.json", config_json_); !s.ok()) return Fail(s);
  if (auto files = writer_->Commit(); !files.ok()) return Fail(files.status());
  synced_ = true;
  return absl::OkStatus();
}

absl::Status StreamedCopy::Commit() {
  if (absl::Status s = Sync(); !s.ok()) return s;
  if (std::rename(tmp_.c_str(), dir_.c_str()) != 0) return Fail(ErrnoError("cannot rename the copy to", dir_));
  committed_ = true;
  if (absl::Status s = SyncDirectory(fs::path(dir_).parent_path().string()); !s.ok()) return Fail(s);
  return absl::OkStatus();
}

}  // namespace lowbit::runtime
