#include "calibrator/service/upload_store.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "calibrator/dataset.h"
#include "calibrator/llama.h"
#include "common/file_util.h"
#include "common/path_guard.h"
#include "rpc/crc32c.h"
#include "spdlog/spdlog.h"

namespace lowbit::calibrator {

namespace fs = std::filesystem;

namespace {

absl::Status WriteAll(std::FILE* f, const std::string& bytes, const std::string& what) {
  if (!bytes.empty() && std::fwrite(bytes.data(), 1, bytes.size(), f) != bytes.size()) {
    return absl::InternalError(absl::StrCat("cannot write ", what, " (disk full?)"));
  }
  return absl::OkStatus();
}

absl::Status CloseSynced(std::FILE*& f, const std::string& what) {
  if (f == nullptr) return absl::OkStatus();
  bool ok = std::fflush(f) == 0 && fsync(fileno(f)) == 0;
  ok = std::fclose(f) == 0 && ok;
  f = nullptr;
  return ok ? absl::OkStatus() : absl::InternalError(absl::StrCat("cannot write ", what));
}

// A write failure as the client sees it: its code (ResourceExhausted for a full disk), the file
// named as the client sent it, not by the server's path (which goes to the server's log).
absl::Status FileError(const absl::Status& s, const char* verb, const std::string& file) {
  spdlog::error("upload: {}", s.ToString());
  return absl::Status(
      s.code(), absl::StrCat("cannot ", verb, " '", file, "' of the upload",
                             s.code() == absl::StatusCode::kResourceExhausted ? ": the server's disk is full" : ""));
}

// `message` with the server's temp directory `tmp_dir` replaced: "<tmp_dir>/<file>" becomes
// "<file>" (the name the client sent), and the directory itself `as` (or "the upload"), so a
// client never sees the server's state-dir layout.
std::string ClientMessage(absl::string_view message, const std::string& tmp_dir, const std::string& as) {
  std::string out(message);
  if (tmp_dir.empty()) return out;
  std::error_code ec;
  std::vector<std::string> forms = {tmp_dir};
  const std::string canonical = fs::weakly_canonical(tmp_dir, ec).string();
  if (!ec && !canonical.empty() && canonical != tmp_dir) forms.push_back(canonical);
  const std::string absolute = fs::absolute(tmp_dir, ec).string();
  if (!ec && !absolute.empty() && absolute != tmp_dir) forms.push_back(absolute);
  // Longest first: an absolute form contains the relative one.
  std::sort(forms.begin(), forms.end(), [](const std::string& a, const std::string& b) { return a.size() > b.size(); });
  for (const std::string& f : forms) {
    out = absl::StrReplaceAll(out, {{f + "/", ""}});
    out = absl::StrReplaceAll(out, {{f, as.empty() ? std::string("the upload") : as}});
  }
  return out;
}

void RemoveTree(const std::string& dir) {
  if (dir.empty()) return;
  std::error_code ec;
  fs::remove_all(dir, ec);
}

// Renames the finished temp dir into place, refusing to replace an existing upload.
absl::Status Publish(const std::string& tmp_dir, const std::string& parent, const std::string& name,
                     const std::string& what) {
  const std::string dest = absl::StrCat(parent, "/", name);
  // renameat2(RENAME_NOREPLACE) semantics: rename(2) onto an existing non-empty directory fails.
  std::error_code ec;
  if (fs::exists(dest, ec)) return absl::AlreadyExistsError(absl::StrCat(what, " '", name, "' already exists"));
  if (std::rename(tmp_dir.c_str(), dest.c_str()) != 0) {
    if (errno == ENOTEMPTY || errno == EEXIST) {
      return absl::AlreadyExistsError(absl::StrCat(what, " '", name, "' already exists"));
    }
    return absl::InternalError(absl::StrCat("cannot move ", what, " '", name, "' into place: ", std::strerror(errno)));
  }
  return SyncDirectory(parent);
}

absl::Status SizeCheck(int64_t total, int64_t limit) {
  if (limit > 0 && total > limit) {
    return absl::ResourceExhaustedError(
        absl::StrCat("upload exceeds the server's limit of ", limit, " bytes (max_upload_bytes)"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<UploadStore>> UploadStore::Open(const std::string& state_dir, int64_t max_upload_bytes) {
  auto store = std::unique_ptr<UploadStore>(new UploadStore());
  store->state_dir_ = state_dir;
  store->max_upload_bytes_ = max_upload_bytes;
  std::error_code ec;
  fs::remove_all(fs::path(state_dir) / "tmp", ec);
  for (const char* sub : {"datasets", "models", "tmp"}) {
    fs::create_directories(fs::path(state_dir) / sub, ec);
    if (ec) return absl::InternalError(absl::StrCat("cannot create ", state_dir, "/", sub, ": ", ec.message()));
  }
  return store;
}

absl::StatusOr<std::string> UploadStore::DatasetFile(const std::string& name) const {
  if (absl::Status s = ValidatePlainName(name, "dataset"); !s.ok()) return s;
  std::error_code ec;
  for (const char* file : {"data.jsonl", "data.bin"}) {
    std::string p = absl::StrCat(state_dir_, "/datasets/", name, "/", file);
    if (fs::exists(p, ec)) return p;
  }
  return absl::NotFoundError(absl::StrCat("dataset '", name, "' was not uploaded (UploadDataset)"));
}

absl::StatusOr<std::string> UploadStore::ModelDir(const std::string& name) const {
  if (absl::Status s = ValidatePlainName(name, "uploaded model"); !s.ok()) return s;
  std::string p = absl::StrCat(state_dir_, "/models/", name);
  std::error_code ec;
  if (!fs::is_directory(p, ec)) {
    return absl::NotFoundError(absl::StrCat("model 'uploads/", name, "' was not uploaded (UploadModel)"));
  }
  return p;
}

namespace {

const char* KindDir(v1::UploadKind kind) { return kind == v1::UPLOAD_KIND_MODEL ? "models" : "datasets"; }

int64_t ModifiedUnixMs(const fs::path& p) {
  struct stat st;
  if (::stat(p.c_str(), &st) != 0) return 0;
  return static_cast<int64_t>(st.st_mtim.tv_sec) * 1000 + st.st_mtim.tv_nsec / 1000000;
}

}  // namespace

std::vector<UploadStore::Entry> UploadStore::List() const {
  std::vector<Entry> out;
  for (v1::UploadKind kind : {v1::UPLOAD_KIND_DATASET, v1::UPLOAD_KIND_MODEL}) {
    std::vector<Entry> of_kind;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(fs::path(state_dir_) / KindDir(kind), ec)) {
      std::error_code dec;
      if (!e.is_directory(dec)) continue;
      of_kind.push_back({kind, e.path().filename().string(), TreeBytes(e.path().string()), ModifiedUnixMs(e.path())});
    }
    std::sort(of_kind.begin(), of_kind.end(), [](const Entry& a, const Entry& b) { return a.name < b.name; });
    out.insert(out.end(), of_kind.begin(), of_kind.end());
  }
  return out;
}

absl::StatusOr<UploadStore::Removal> UploadStore::MoveAside(v1::UploadKind kind, const std::string& name) const {
  if (kind != v1::UPLOAD_KIND_DATASET && kind != v1::UPLOAD_KIND_MODEL) {
    return absl::InvalidArgumentError("upload kind must be UPLOAD_KIND_DATASET or UPLOAD_KIND_MODEL");
  }
  absl::StatusOr<std::string> found = kind == v1::UPLOAD_KIND_MODEL ? ModelDir(name) : DatasetFile(name);
  if (!found.ok()) return found.status();
  const fs::path dir = fs::path(state_dir_) / KindDir(kind) / name;
  Removal r{{kind, name, TreeBytes(dir.string()), ModifiedUnixMs(dir)}, ""};
  absl::StatusOr<std::string> trash = NewTempDir(absl::StrCat("removed-", KindDir(kind)));
  if (!trash.ok()) return trash.status();
  r.trash = *trash;
  std::error_code ec;
  fs::remove(r.trash, ec);  // NewTempDir made it; the rename puts the upload in its place
  fs::rename(dir, r.trash, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot remove upload '", name, "': ", ec.message()));
  // Gone for jobs from here on: a failed sync only means a crash could bring it back.
  if (absl::Status s = SyncDirectory(dir.parent_path().string()); !s.ok()) spdlog::warn("{}", s.ToString());
  return r;
}

void UploadStore::Purge(const Removal& removal) const {
  std::error_code ec;
  fs::remove_all(removal.trash, ec);
  if (ec) spdlog::warn("cannot delete {} (it goes at the next start): {}", removal.trash, ec.message());
}

absl::StatusOr<std::string> UploadStore::NewTempDir(const std::string& kind) const {
  static std::atomic<uint64_t> counter{0};
  std::string dir = absl::StrFormat("%s/tmp/%s-%d-%d", state_dir_, kind, getpid(), counter.fetch_add(1));
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) {
    spdlog::error("upload: cannot create {}: {}", dir, ec.message());
    return absl::InternalError(
        absl::StrCat("cannot create the ", kind, " upload's temp directory on the server: ", ec.message()));
  }
  return dir;
}

// ---------------------------------------------------------------------------------------------
// Datasets

absl::StatusOr<std::unique_ptr<UploadStore::DatasetUpload>> UploadStore::BeginDataset() const {
  absl::StatusOr<std::string> dir = NewTempDir("dataset");
  if (!dir.ok()) return dir.status();
  auto up = std::unique_ptr<DatasetUpload>(new DatasetUpload());
  up->store_ = this;
  up->tmp_dir_ = *dir;
  return up;
}

UploadStore::DatasetUpload::~DatasetUpload() {
  if (data_ != nullptr) std::fclose(data_);
  if (idx_ != nullptr) std::fclose(idx_);
  RemoveTree(tmp_dir_);
}

absl::Status UploadStore::DatasetUpload::Add(const v1::UploadDatasetRequest& msg) {
  if (last_seen_) return absl::InvalidArgumentError("a message followed the one with last=true");
  if (messages_++ == 0) {
    if (absl::Status s = ValidatePlainName(msg.name(), "dataset name"); !s.ok()) return s;
    if (msg.format() != "jsonl" && msg.format() != "bin") {
      return absl::InvalidArgumentError(
          absl::StrCat("dataset format must be \"jsonl\" or \"bin\", not \"", msg.format(), "\""));
    }
    name_ = msg.name();
    format_ = msg.format();
    if (store_->DatasetFile(name_).ok()) {
      return absl::AlreadyExistsError(absl::StrCat("dataset '", name_, "' already exists"));
    }
    data_ = std::fopen(absl::StrCat(tmp_dir_, "/data.", format_).c_str(), "wb");
    if (format_ == "bin") idx_ = std::fopen(absl::StrCat(tmp_dir_, "/data.idx").c_str(), "wb");
    if (data_ == nullptr || (format_ == "bin" && idx_ == nullptr)) {
      return absl::InternalError("cannot create the upload's temp files");
    }
  } else if ((!msg.name().empty() && msg.name() != name_) || (!msg.format().empty() && msg.format() != format_)) {
    return absl::InvalidArgumentError("name and format belong in the first message only (or must repeat it)");
  }
  if (!msg.idx_data().empty() && format_ != "bin") {
    return absl::InvalidArgumentError("idx_data is only for the \"bin\" format");
  }
  bytes_ += static_cast<int64_t>(msg.data().size() + msg.idx_data().size());
  if (absl::Status s = SizeCheck(bytes_, store_->max_upload_bytes()); !s.ok()) return s;
  crc_data_ = rpc::Crc32c(msg.data().data(), msg.data().size(), crc_data_);
  if (absl::Status s = WriteAll(data_, msg.data(), "the dataset"); !s.ok()) return s;
  if (idx_ != nullptr) {
    if (absl::Status s = WriteAll(idx_, msg.idx_data(), "the dataset index"); !s.ok()) return s;
  }
  if (msg.last()) {
    last_seen_ = true;
    expected_crc_ = msg.crc32c();
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::UploadDatasetResponse> UploadStore::DatasetUpload::Finish() {
  if (messages_ == 0) return absl::InvalidArgumentError("empty upload stream: no messages");
  if (!last_seen_) {
    return absl::InvalidArgumentError(
        absl::StrCat("dataset '", name_, "' upload is truncated: the stream ended without a message with last=true"));
  }
  // The CRC of the data bytes, then (chained) of the idx bytes. Data and idx pieces arrive
  // interleaved, so the idx part is computed from its (small) file at the end.
  uint32_t crc = crc_data_;
  if (format_ == "bin") {
    std::fflush(idx_);
    absl::StatusOr<std::string> idx = ReadFileToString(tmp_dir_ + "/data.idx");
    if (!idx.ok()) return idx.status();
    crc = rpc::Crc32c(idx->data(), idx->size(), crc_data_);
  }
  if (crc != expected_crc_) {
    return absl::DataLossError(absl::StrFormat(
        "dataset '%s': CRC-32C mismatch (received bytes %08x, message says %08x)", name_, crc, expected_crc_));
  }
  if (absl::Status s = CloseSynced(data_, "the dataset"); !s.ok()) return s;
  if (absl::Status s = CloseSynced(idx_, "the dataset index"); !s.ok()) return s;
  // Parsed under the client's name for it (messages say "<name>:<line>: ..."), not the temp path.
  absl::StatusOr<std::vector<TokenSequence>> seqs = ParseUploadedDataset();
  if (!seqs.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "dataset '", name_, "' does not parse: ", ClientMessage(seqs.status().message(), tmp_dir_, name_)));
  }
  for (size_t i = 0; i < seqs->size(); ++i) {
    if ((*seqs)[i].empty()) {
      return absl::InvalidArgumentError(absl::StrCat("dataset '", name_, "': sequence ", i,
                                                     " (0-based) has no token ids; every sequence needs at least one"));
    }
  }
  if (seqs->empty()) return absl::InvalidArgumentError(absl::StrCat("dataset '", name_, "' holds no sequences"));
  v1::UploadDatasetResponse resp;
  resp.set_name(name_);
  resp.set_bytes(bytes_);
  resp.set_sequences(static_cast<int64_t>(seqs->size()));
  int64_t tokens = 0;
  for (const auto& s : *seqs) tokens += static_cast<int64_t>(s.size());
  resp.set_tokens(tokens);
  if (absl::Status s = SyncDirectory(tmp_dir_); !s.ok()) return s;
  if (absl::Status s = Publish(tmp_dir_, store_->state_dir_ + "/datasets", name_, "dataset"); !s.ok()) return s;
  tmp_dir_.clear();
  return resp;
}

absl::StatusOr<std::vector<TokenSequence>> UploadStore::DatasetUpload::ParseUploadedDataset() const {
  const std::string data_path = absl::StrCat(tmp_dir_, "/data.", format_);
  if (format_ == "jsonl") {
    absl::StatusOr<std::string> text = ReadFileToString(data_path);
    if (!text.ok()) return text.status();
    return ParseJsonlTokens(*text, name_);
  }
  absl::StatusOr<std::shared_ptr<MappedFile>> bin = MappedFile::Open(data_path);
  if (!bin.ok()) return bin.status();
  absl::StatusOr<std::shared_ptr<MappedFile>> idx = MappedFile::Open(absl::StrCat(tmp_dir_, "/data.idx"));
  if (!idx.ok()) return idx.status();
  return ParseBinTokens((*bin)->bytes(), (*idx)->bytes(), name_);
}

// ---------------------------------------------------------------------------------------------
// Models

absl::StatusOr<std::unique_ptr<UploadStore::ModelUpload>> UploadStore::BeginModel() const {
  absl::StatusOr<std::string> dir = NewTempDir("model");
  if (!dir.ok()) return dir.status();
  auto up = std::unique_ptr<ModelUpload>(new ModelUpload());
  up->store_ = this;
  up->tmp_dir_ = *dir;
  return up;
}

UploadStore::ModelUpload::~ModelUpload() {
  file_.reset();  // stops its writer thread before the directory goes
  RemoveTree(tmp_dir_);
}

absl::Status UploadStore::ModelUpload::Add(const v1::UploadModelRequest& msg, const rpc::DataPieces& data) {
  if (messages_++ == 0) {
    if (msg.name().empty()) {
      return absl::InvalidArgumentError(
          "model name is missing: the first message of an UploadModel stream carries the model's name "
          "(alone, or with the first piece of the first file)");
    }
    if (absl::Status s = ValidatePlainName(msg.name(), "model name"); !s.ok()) return s;
    name_ = msg.name();
    if (store_->ModelDir(name_).ok()) {
      return absl::AlreadyExistsError(absl::StrCat("model 'uploads/", name_, "' already exists"));
    }
    // A message with the name alone (no file fields): the files follow.
    if (msg.file_name().empty() && data.size == 0 && msg.offset() == 0 && !msg.file_last() && msg.crc32c() == 0) {
      return absl::OkStatus();
    }
  } else if (!msg.name().empty() && msg.name() != name_) {
    return absl::InvalidArgumentError("the model name belongs in the first message only (or must repeat it)");
  }
  if (file_name_.empty()) {
    // The first piece of a file.
    if (msg.file_name().empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "file_name is missing: the first piece of each file carries its file_name (e.g. \"config.json\")",
          done_.empty() ? "" : absl::StrCat("; the last complete file was '", done_.back(), "'")));
    }
    if (absl::Status s = ValidatePlainName(msg.file_name(), "file_name"); !s.ok()) return s;
    if (std::find(done_.begin(), done_.end(), msg.file_name()) != done_.end()) {
      return absl::InvalidArgumentError(absl::StrCat("file '", msg.file_name(), "' was already sent"));
    }
    absl::StatusOr<std::unique_ptr<StreamingFileWriter>> file =
        StreamingFileWriter::Create(absl::StrCat(tmp_dir_, "/", msg.file_name()));
    if (!file.ok()) return FileError(file.status(), "create", msg.file_name());
    file_ = *std::move(file);
    file_name_ = msg.file_name();
    file_crc_ = 0;
  } else if (!msg.file_name().empty() && msg.file_name() != file_name_) {
    return absl::InvalidArgumentError(
        absl::StrCat("file '", msg.file_name(), "' started before '", file_name_, "' ended (file_last)"));
  }
  if (msg.offset() != file_->size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("file '", file_name_, "': offset ", msg.offset(), " but ", file_->size(), " bytes were received"));
  }
  bytes_ += static_cast<int64_t>(data.size);
  if (absl::Status s = SizeCheck(bytes_, store_->max_upload_bytes()); !s.ok()) return s;
  for (std::span<const uint8_t> piece : data.pieces) {
    if (absl::Status s = file_->Append(piece); !s.ok()) return FileError(s, "write", file_name_);
  }
  file_crc_ = data.Crc32c(file_crc_);
  if (msg.file_last()) {
    if (file_crc_ != msg.crc32c()) {
      return absl::DataLossError(absl::StrFormat("file '%s': CRC-32C mismatch (received bytes %08x, message says %08x)",
                                                 file_name_, file_crc_, msg.crc32c()));
    }
    if (absl::Status s = CloseFile(); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status UploadStore::ModelUpload::CloseFile() {
  absl::Status s = file_->Close();
  file_.reset();
  if (!s.ok()) return FileError(s, "write", file_name_);
  done_.push_back(file_name_);
  ++files_;
  file_name_.clear();
  return absl::OkStatus();
}

absl::StatusOr<v1::UploadModelResponse> UploadStore::ModelUpload::Finish() {
  if (messages_ == 0) return absl::InvalidArgumentError("empty upload stream: no messages");
  if (!file_name_.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("model '", name_, "' upload is truncated: file '", file_name_, "' ended without file_last"));
  }
  if (std::find(done_.begin(), done_.end(), "config.json") == done_.end()) {
    return absl::InvalidArgumentError(absl::StrCat("model '", name_, "' has no config.json"));
  }
  absl::StatusOr<std::unique_ptr<LlamaModel>> model = LlamaModel::Open(tmp_dir_);
  if (!model.ok()) {
    // The loader names files by their paths in the temp dir: the client sees its file names.
    return absl::InvalidArgumentError(
        absl::StrCat("model '", name_, "' does not load: ", ClientMessage(model.status().message(), tmp_dir_, "")));
  }
  model->reset();
  if (absl::Status s = SyncDirectory(tmp_dir_); !s.ok()) return s;
  if (absl::Status s = Publish(tmp_dir_, store_->state_dir_ + "/models", name_, "model"); !s.ok()) return s;
  tmp_dir_.clear();
  v1::UploadModelResponse resp;
  resp.set_model(absl::StrCat("uploads/", name_));
  resp.set_bytes(bytes_);
  resp.set_files(files_);
  return resp;
}

}  // namespace lowbit::calibrator
