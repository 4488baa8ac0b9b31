#include "common/safetensors_writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <filesystem>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"

namespace lowbit {
namespace {

// Dirty bytes a file may gather before its writeback is started: the disk works while the rest
// arrives, and the fsync in Commit has little left to wait for.
constexpr uint64_t kWritebackStep = uint64_t{16} << 20;

bool PlainSafetensorsName(const std::string& f) {
  return absl::EndsWith(f, ".safetensors") && f.size() > 12 && f.find('/') == std::string::npos &&
         f.find('\0') == std::string::npos && f.front() != '.';
}

}  // namespace

absl::StatusOr<std::unique_ptr<SafetensorsModelWriter>> SafetensorsModelWriter::Create(
    const std::string& dir, std::span<const Placement> tensors) {
  std::map<std::string, std::vector<SafetensorsEntry>> by_file;
  for (const Placement& p : tensors) {
    if (!PlainSafetensorsName(p.file)) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", p.name, "': file name '", p.file, "' is not a plain *.safetensors name"));
    }
    by_file[p.file].push_back({p.name, p.dtype, p.shape});
  }
  const bool indexed = by_file.size() > 1 || (by_file.size() == 1 && by_file.begin()->first != "model.safetensors");
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    const std::string f = e.path().filename().string();
    const bool stray = (absl::EndsWith(f, ".safetensors") && !by_file.count(f)) ||
                       (f == "model.safetensors.index.json" && !indexed);
    if (stray) {
      return absl::FailedPreconditionError(absl::StrCat(
          dir, " already holds ", f,
          ", which this model does not replace: a reader would mix two models; use an empty directory"));
    }
  }
  auto w = std::unique_ptr<SafetensorsModelWriter>(new SafetensorsModelWriter());
  w->dir_ = dir;
  w->indexed_ = indexed;
  for (auto& [file, entries] : by_file) {
    absl::StatusOr<SafetensorsLayout> layout = LayoutSafetensorsFile(std::move(entries));
    if (!layout.ok()) return absl::InvalidArgumentError(absl::StrCat(file, ": ", layout.status().message()));
    w->layouts_.push_back(*std::move(layout));
  }
  size_t i = 0;
  for (const auto& [file, unused] : by_file) {
    const SafetensorsLayout& layout = w->layouts_[i];
    for (const SafetensorsEntry& e : layout.entries) {
      if (w->where_.count(e.name)) {
        return absl::InvalidArgumentError(absl::StrCat("tensor '", e.name, "' is placed in two files"));
      }
      w->where_[e.name] = {i, layout.prefix.size() + e.begin, &e};
      w->weight_map_[e.name] = file;
      w->total_bytes_ += e.end - e.begin;
    }
    if (absl::Status s = w->CreateFile(file, layout.file_size(), &layout.prefix); !s.ok()) return s;
    ++i;
  }
  return w;
}

absl::Status SafetensorsModelWriter::CreateFile(const std::string& name, uint64_t size, const std::string* prefix) {
  File f;
  f.name = name;
  f.tmp_path = absl::StrCat(dir_, "/", name, ".tmp.", getpid());
  f.size = size;
  f.prefix = prefix;
  const int fd = open(f.tmp_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoError("cannot create", f.tmp_path);
  close(fd);
  files_.push_back(std::move(f));  // from here on the destructor removes it
  return absl::OkStatus();
}

absl::Status SafetensorsModelWriter::OpenInPlace(File& f, bool header) {
  f.fd = open(f.tmp_path.c_str(), O_WRONLY | O_CLOEXEC);
  if (f.fd < 0) return ErrnoError("cannot open", f.tmp_path);
  if (ftruncate(f.fd, static_cast<off_t>(f.size)) != 0) return ErrnoError("cannot size", f.tmp_path);
  if (header && f.prefix != nullptr &&
      pwrite(f.fd, f.prefix->data(), f.prefix->size(), 0) != static_cast<ssize_t>(f.prefix->size())) {
    return ErrnoError("cannot write", f.tmp_path);
  }
  return absl::OkStatus();
}

absl::Status SafetensorsModelWriter::OpenForPwrite(File& f) {
  if (f.seq) {
    if (absl::Status s = EndStreaming(f); !s.ok()) return s;
  }
  if (f.fd >= 0) return absl::OkStatus();
  const bool streamed = f.durable;  // streamed whole: its header is in it
  f.durable = false;
  return OpenInPlace(f, /*header=*/!streamed);
}

absl::Status SafetensorsModelWriter::EndStreaming(File& f) {
  const bool whole = static_cast<uint64_t>(f.seq->size()) == f.size;
  absl::Status s = f.seq->Close();  // truncates to what was streamed, fsyncs
  f.seq.reset();
  if (!s.ok()) return s;
  if (whole) {
    f.durable = true;
    return absl::OkStatus();
  }
  return OpenInPlace(f, /*header=*/false);
}

absl::Status SafetensorsModelWriter::AddFile(const std::string& name, std::string_view contents) {
  if (name.empty() || name.find('/') != std::string::npos || name == "." || name == "..") {
    return absl::InvalidArgumentError(absl::StrCat("'", name, "' is not a plain file name"));
  }
  if (absl::Status s = CreateFile(name, contents.size(), nullptr); !s.ok()) return s;
  File& f = files_.back();
  if (absl::Status s = OpenInPlace(f, /*header=*/false); !s.ok()) return s;
  if (pwrite(f.fd, contents.data(), contents.size(), 0) != static_cast<ssize_t>(contents.size())) {
    return ErrnoError("cannot write", f.tmp_path);
  }
  return absl::OkStatus();
}

SafetensorsModelWriter::~SafetensorsModelWriter() {
  CloseAll();
  if (!committed_) {
    for (const File& f : files_) std::remove(f.tmp_path.c_str());
  }
}

void SafetensorsModelWriter::CloseAll() {
  for (File& f : files_) {
    f.seq.reset();
    if (f.fd >= 0) close(f.fd);
    f.fd = -1;
  }
}

absl::Status SafetensorsModelWriter::Write(const std::string& name, uint64_t offset, std::span<const uint8_t> bytes) {
  auto it = where_.find(name);
  if (it == where_.end()) return absl::InvalidArgumentError(absl::StrCat("the model has no tensor '", name, "'"));
  const Where& w = it->second;
  const uint64_t size = w.entry->end - w.entry->begin;
  if (offset > size || bytes.size() > size - offset) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "': bytes [", offset, ", ", offset + bytes.size(),
                                                   ") fall outside its ", size, " bytes"));
  }
  File& f = files_[w.file];
  uint64_t at = w.offset + offset;
  if (!f.seq && f.fd < 0 && !f.durable && f.prefix != nullptr && at == f.prefix->size()) {
    // The file's first tensor bytes: stream it, and end the streaming of the file before.
    if (streaming_ >= 0 && files_[streaming_].seq) {
      if (absl::Status s = EndStreaming(files_[streaming_]); !s.ok()) return s;
    }
    absl::StatusOr<std::unique_ptr<StreamingFileWriter>> seq = StreamingFileWriter::Create(f.tmp_path);
    if (!seq.ok()) return seq.status();
    f.seq = *std::move(seq);
    streaming_ = static_cast<int>(w.file);
    if (absl::Status s = f.seq->Append({reinterpret_cast<const uint8_t*>(f.prefix->data()), f.prefix->size()});
        !s.ok()) {
      return s;
    }
  }
  if (f.seq && at == static_cast<uint64_t>(f.seq->size())) {
    streamed_bytes_ += bytes.size();
    return f.seq->Append(bytes);
  }
  // Not the next byte of a streamed file (or a file not streamed at all): in place from here on.
  if (absl::Status s = OpenForPwrite(f); !s.ok()) return s;
  while (!bytes.empty()) {
    const ssize_t n = pwrite(f.fd, bytes.data(), bytes.size(), static_cast<off_t>(at));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return ErrnoError("cannot write", f.tmp_path);
    bytes = bytes.subspan(static_cast<size_t>(n));
    at += static_cast<uint64_t>(n);
    f.unflushed += static_cast<uint64_t>(n);
  }
  if (f.unflushed >= kWritebackStep) {
    sync_file_range(f.fd, 0, 0, SYNC_FILE_RANGE_WRITE);
    f.unflushed = 0;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> SafetensorsModelWriter::Commit() {
  if (indexed_) {
    if (absl::Status s = AddFile("model.safetensors.index.json", SafetensorsIndexJson(weight_map_, total_bytes_));
        !s.ok()) {
      return s;
    }
  }
  // One thread per file: fsyncs issued together share the filesystem's journal commits.
  std::vector<absl::Status> synced(files_.size());
  {
    std::vector<std::thread> threads;
    for (size_t i = 0; i < files_.size(); ++i) {
      threads.emplace_back([&, i] {
        File& f = files_[i];
        if (f.seq) synced[i] = EndStreaming(f);  // durable when whole, else open in place
        if (!synced[i].ok() || f.durable) return;
        synced[i] = OpenForPwrite(f);  // opens a file nothing arrived for, with its header
        if (synced[i].ok() && fsync(f.fd) != 0) synced[i] = ErrnoError("cannot sync", f.tmp_path);
      });
    }
    for (std::thread& t : threads) t.join();
  }
  for (const absl::Status& s : synced) {
    if (!s.ok()) return s;
  }
  CloseAll();
  std::vector<std::string> written;
  for (const File& f : files_) {  // the index (last) goes in after the files it names
    const std::string path = absl::StrCat(dir_, "/", f.name);
    if (std::rename(f.tmp_path.c_str(), path.c_str()) != 0) return ErrnoError("cannot rename onto", path);
    written.push_back(f.name);
  }
  committed_ = true;
  if (absl::Status s = SyncDirectory(dir_); !s.ok()) return s;
  return written;
}

}  // namespace lowbit
