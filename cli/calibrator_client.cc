#include "cli/calibrator_client.h"

#include <signal.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <set>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "cli/connection.h"
#include "common/file_util.h"
#include "common/safetensors.h"
#include "common/safetensors_writer.h"
#include "rpc/crc32c.h"
#include "rpc/raw_stream.h"
#include "rpc/status.h"
#include "rpc/tensor_codec.h"

namespace lowbit::cli {
namespace fs = std::filesystem;

namespace {

absl::Status StatusOf(const grpc::Status& s) { return rpc::FromGrpcStatus(s); }

}  // namespace

std::string JobStateName(v1::JobState state) {
  std::string n = v1::JobState_Name(state);
  return n.rfind("JOB_STATE_", 0) == 0 ? n.substr(10) : n;
}

std::string JobLine(const v1::Job& job) {
  const auto& s = job.spec();
  std::string recipe = s.has_recipe_yaml() ? "recipe" : s.scheme() + (s.algorithm().empty() ? "" : "/" + s.algorithm());
  std::string progress;
  if (job.progress().num_layers() > 0) {
    progress = absl::StrFormat("layer %d/%d %s", std::min(job.progress().layer() + 1, job.progress().num_layers()),
                               job.progress().num_layers(), job.progress().phase());
  }
  return absl::StrFormat("%-26s %-10s %-28s %-20s %s%s", job.id(), JobStateName(job.state()), progress, s.model(),
                         recipe, job.error_message().empty() ? "" : "  error: " + job.error_message());
}

absl::StatusOr<v1::UploadDatasetResponse> UploadDatasetFile(CalibratorStubT& stub, const rpc::ClientConfig& config,
                                                            const std::string& path, const std::string& name) {
  const int64_t chunk_bytes = std::clamp<int64_t>(config.chunk_bytes, 1, rpc::kMaxChunkBytes);
  const bool bin = fs::path(path).extension() == ".bin";
  auto data = ReadFileToString(path);
  if (!data.ok()) return data.status();
  std::string idx;
  if (bin) {
    auto i = ReadFileToString(fs::path(path).replace_extension(".idx").string());
    if (!i.ok()) return i.status();
    idx = std::move(*i);
  }
  grpc::ClientContext ctx;
  Prepare(&ctx, config, Deadline::kStream);
  v1::UploadDatasetResponse resp;
  auto writer = stub.UploadDataset(&ctx, &resp);
  uint32_t crc = rpc::Crc32c(data->data(), data->size());
  crc = rpc::Crc32c(idx.data(), idx.size(), crc);
  size_t off = 0, ioff = 0;
  bool first = true;
  while (true) {
    v1::UploadDatasetRequest req;
    if (first) {
      req.set_name(name);
      req.set_format(bin ? "bin" : "jsonl");
      first = false;
    }
    const size_t n = std::min<size_t>(chunk_bytes, data->size() - off);
    req.set_data(data->data() + off, n);
    off += n;
    const size_t in = std::min<size_t>(chunk_bytes, idx.size() - ioff);
    req.set_idx_data(idx.data() + ioff, in);
    ioff += in;
    const bool last = off == data->size() && ioff == idx.size();
    if (last) {
      req.set_last(true);
      req.set_crc32c(crc);
    }
    if (!writer->Write(req)) break;
    if (last) break;
  }
  writer->WritesDone();
  auto st = writer->Finish();
  if (!st.ok()) return StatusOf(st);
  return resp;
}

namespace {

// Sends one file as UploadModelRequest messages of at most `chunk_bytes` data bytes; the CRC-32C
// is computed chunk by chunk as they go (the last message carries it). False when the stream broke.
bool SendModelFile(grpc::ClientWriter<grpc::ByteBuffer>& writer, const std::shared_ptr<MappedFile>& file,
                   const std::string& file_name, const std::string& model_name, int64_t chunk_bytes) {
  const std::span<const uint8_t> bytes = file->bytes();
  uint32_t crc = 0;
  size_t off = 0;
  v1::UploadModelRequest req;
  req.set_name(model_name);  // "" but for the first file, and sent in its first message only
  req.set_file_name(file_name);
  do {
    const auto data = bytes.subspan(off, std::min<size_t>(chunk_bytes, bytes.size() - off));
    req.set_offset(static_cast<int64_t>(off));
    crc = rpc::Crc32c(data.data(), data.size(), crc);
    off += data.size();
    if (off == bytes.size()) {
      req.set_file_last(true);
      req.set_crc32c(crc);
    }
    if (!writer.Write(rpc::EncodeWithBulk(req, rpc::kUploadModelData, data, file))) return false;
    req.clear_name();
  } while (off < bytes.size());
  return true;
}

}  // namespace

absl::StatusOr<v1::UploadModelResponse> UploadModelDir(grpc::ChannelInterface& channel, const rpc::ClientConfig& config,
                                                       const std::string& dir, const std::string& name) {
  std::vector<fs::path> files;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    if (e.is_regular_file()) files.push_back(e.path());
  }
  if (ec) return absl::NotFoundError(absl::StrCat("cannot list model directory '", dir, "': ", ec.message()));
  std::sort(files.begin(), files.end());
  grpc::ClientContext ctx;
  Prepare(&ctx, config, Deadline::kStream);
  v1::UploadModelResponse resp;
  auto writer = rpc::RawClientWriter(&channel, rpc::kUploadModelPath, &ctx, &resp);
  for (size_t i = 0; i < files.size(); ++i) {
    auto mapped = MappedFile::Open(files[i].string());
    if (!mapped.ok()) return mapped.status();
    if (!SendModelFile(*writer, *mapped, files[i].filename().string(), i == 0 ? name : "",
                       std::clamp<int64_t>(config.chunk_bytes, 1, rpc::kMaxChunkBytes))) {
      break;
    }
  }
  writer->WritesDone();
  auto st = writer->Finish();
  if (!st.ok()) return StatusOf(st);
  return resp;
}

namespace {

// The width of the terminal on `fd` (80 when it does not say).
int TerminalColumns(int fd) {
  winsize ws = {};
  return ioctl(fd, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 1 ? ws.ws_col : 80;
}

}  // namespace

absl::StatusOr<v1::Job> WaitForJob(CalibratorStubT& stub, const rpc::ClientConfig& config, const std::string& id,
                                   bool bar) {
  const bool tty = bar && isatty(2);
  grpc::ClientContext ctx;
  Prepare(&ctx, config, Deadline::kNone);
  v1::WatchJobRequest req;
  req.set_id(id);
  auto reader = stub.WatchJob(&ctx, req);
  v1::WatchJobResponse resp;
  v1::Job last;
  int64_t printed_layer = -2;
  std::string printed_phase;
  while (reader->Read(&resp)) {
    last = resp.job();
    const auto& p = last.progress();
    if (bar && p.num_layers() > 0) {
      const std::string eta = p.eta_s() >= 0 ? absl::StrFormat("ETA %.1fs", p.eta_s()) : "ETA ?";
      const int width = 24;
      const int filled = static_cast<int>(width * std::min<int64_t>(p.layers_done(), p.num_layers()) / p.num_layers());
      const std::string line =
          absl::StrFormat("[%s%s] layer %d/%d %-10s %-36s loss %.4g  %.1fs  %s", std::string(filled, '#'),
                          std::string(width - filled, '.'), std::min(p.layer() + 1, p.num_layers()), p.num_layers(),
                          p.phase(), p.module().size() > 36 ? p.module().substr(p.module().size() - 36) : p.module(),
                          p.loss(), p.elapsed_s(), eta);
      if (tty) {  // one terminal line, redrawn: cut to the width, padded over the previous one
        const int cols = TerminalColumns(2) - 1;
        std::fprintf(stderr, "\r%-*s", cols, line.substr(0, cols).c_str());
      } else if (p.layer() != printed_layer || p.phase() != printed_phase) {
        std::fprintf(stderr, "%s\n", line.c_str());
      }
      printed_layer = p.layer();
      printed_phase = p.phase();
    }
  }
  if (tty) std::fprintf(stderr, "\n");
  auto st = reader->Finish();
  if (!st.ok()) return StatusOf(st);
  return last;
}

namespace {

// Reads a FetchResult stream: `on_header` with its first message, the header, then `on_chunk`
// with every chunk (fields, and the data apart in the receive slices). Errors: the stream's
// status, a malformed message, a stream that does not start with the header or has a second
// one, or the first error of a callback (the call is then cancelled).
using HeaderFn = std::function<absl::Status(const v1::ResultHeader&)>;
using ChunkFn = std::function<absl::Status(const v1::TensorChunk&, const rpc::DataPieces&)>;
using FileChunkFn = std::function<absl::Status(const v1::ResultFileChunk&)>;
absl::Status ReadResultStream(grpc::ChannelInterface& channel, const rpc::ClientConfig& config, const std::string& id,
                              const HeaderFn& on_header, const ChunkFn& on_chunk, const FileChunkFn& on_file) {
  grpc::ClientContext ctx;
  Prepare(&ctx, config, Deadline::kStream);
  v1::FetchResultRequest req;
  req.set_id(id);
  req.set_chunk_bytes(config.chunk_bytes);
  auto reader = rpc::RawClientReader(&channel, rpc::kFetchResultPath, &ctx, req);
  grpc::ByteBuffer raw;
  v1::FetchResultResponse resp;
  rpc::SplitMessage split;  // reused: its slices are released when the next message arrives
  bool have_header = false;
  absl::Status bad;
  while (bad.ok() && reader->Read(&raw)) {
    bad = rpc::DecodeWithBulk(raw, rpc::kResultChunkData, &resp, &split);
    if (!bad.ok()) {
      bad = absl::DataLossError(absl::StrCat("FetchResult response: ", bad.message()));
    } else if (resp.has_header()) {
      bad = have_header ? absl::DataLossError("the result stream has a second header") : on_header(resp.header());
      have_header = true;
    } else if (!have_header) {
      bad = absl::DataLossError("the result stream does not start with its header");
    } else if (resp.has_chunk()) {
      bad = on_chunk(resp.chunk(), split.data);
    } else if (resp.has_file()) {
      bad = on_file(resp.file());
    }
  }
  if (!bad.ok()) {
    ctx.TryCancel();
    reader->Finish();
    return bad;
  }
  auto st = reader->Finish();
  if (!st.ok()) return StatusOf(st);
  if (!have_header) return absl::DataLossError("the result stream had no header");
  return absl::OkStatus();
}

// The result's other files (tokenizer.json, generation_config.json, ...): the header lists
// them, their pieces follow in order. Each file is checked (plain name that is not one of the
// checkpoint's own files, pieces in order, size, CRC-32C) and handed to `done` whole; a file is
// held in memory until then (they are small next to the tensors).
class ResultFileReceiver {
 public:
  using DoneFn = std::function<absl::Status(const std::string& name, std::string bytes)>;
  static constexpr int64_t kMaxFileBytes = rpc::kMaxResultFileBytes;

  absl::Status Begin(const v1::ResultHeader& h) {
    std::set<std::string> tensor_files;
    for (const v1::TensorInfo& t : h.manifest()) tensor_files.insert(t.file());
    for (const v1::ResultFileInfo& f : h.files()) {
      const std::string& n = f.name();
      auto bad = [&](std::string_view why) {
        return absl::DataLossError(absl::StrCat("the result header lists file '", n, "', which ", std::string(why)));
      };
      if (n.empty() || n == "." || n == ".." || n.find('/') != std::string::npos || n.find('\0') != std::string::npos) {
        return bad("is not a plain file name");
      }
      if (n == "config.json" || n == "report.json" || n == "recipe.yaml" || n == "model.safetensors.index.json" ||
          n.ends_with(".safetensors") || tensor_files.count(n)) {
        return bad("is one of the checkpoint's own files");
      }
      if (!names_.insert(n).second) return bad("it lists twice");
      if (f.size() < 0 || f.size() > kMaxFileBytes) {
        return bad(absl::StrCat("has a size of ", f.size(), " bytes (at most ", kMaxFileBytes, ")"));
      }
      files_.push_back(f);
    }
    return absl::OkStatus();
  }
  absl::Status Add(const v1::ResultFileChunk& c, const DoneFn& done) {
    if (next_ >= files_.size()) {
      return absl::DataLossError(absl::StrCat("the result stream has a piece of file '", c.name(),
                                              "', which its header does not list (or lists once)"));
    }
    const v1::ResultFileInfo& f = files_[next_];
    if (c.name() != f.name()) {
      return absl::DataLossError(
          absl::StrCat("the result stream sent a piece of file '", c.name(), "' where file '", f.name(), "' was next"));
    }
    if (c.offset() != static_cast<int64_t>(bytes_.size()) ||
        static_cast<int64_t>(c.data().size()) > f.size() - static_cast<int64_t>(bytes_.size())) {
      return absl::DataLossError(absl::StrCat("file '", f.name(), "': a piece at offset ", c.offset(), " of ",
                                              c.data().size(), " bytes, after ", bytes_.size(), " of its ", f.size(),
                                              " bytes"));
    }
    if (bytes_.empty()) bytes_.reserve(static_cast<size_t>(f.size()));
    bytes_.append(c.data());
    if (!c.last()) return absl::OkStatus();
    if (static_cast<int64_t>(bytes_.size()) != f.size()) {
      return absl::DataLossError(
          absl::StrCat("file '", f.name(), "' ended after ", bytes_.size(), " of its ", f.size(), " bytes"));
    }
    const uint32_t crc = rpc::Crc32c(bytes_.data(), bytes_.size());
    if (crc != c.crc32c()) {
      return absl::DataLossError(absl::StrFormat("file '%s': CRC-32C mismatch (received bytes %08x, message says %08x)",
                                                 f.name(), crc, c.crc32c()));
    }
    ++next_;
    return done(f.name(), std::exchange(bytes_, std::string()));
  }
  absl::Status Finish() const {
    if (next_ == files_.size()) return absl::OkStatus();
    return absl::DataLossError(absl::StrCat("the result stream ended before file '", files_[next_].name(), "' (", next_,
                                            " of the ", files_.size(), " files its header lists arrived)"));
  }

 private:
  std::vector<v1::ResultFileInfo> files_;
  std::set<std::string> names_;
  size_t next_ = 0;
  std::string bytes_;
};

absl::Status CheckTensorCount(size_t received, const v1::ResultHeader& header) {
  if (static_cast<int64_t>(received) == header.tensors()) return absl::OkStatus();
  return absl::DataLossError(absl::StrCat("received ", received, " tensors, the header announced ", header.tensors()));
}

// Puts each received tensor in place in the files of a SafetensorsModelWriter laid out from the
// header's manifest; a tensor the manifest does not list, or lists with another dtype or shape,
// is DataLoss.
class FileSink : public rpc::TensorSink {
 public:
  FileSink(const rpc::Manifest& manifest, SafetensorsModelWriter& writer) : manifest_(manifest), writer_(writer) {}
  absl::Status Begin(const std::string& name, DType dtype, const Shape& shape, int64_t) override {
    if (absl::Status s = manifest_.Check(name, dtype, shape); !s.ok()) return absl::DataLossError(s.message());
    name_ = name;
    return absl::OkStatus();
  }
  absl::StatusOr<uint32_t> Store(int64_t offset, const rpc::DataPieces& data, uint32_t crc) override {
    for (std::span<const uint8_t> piece : data.pieces) {
      crc = rpc::Crc32c(piece.data(), piece.size(), crc);
      if (absl::Status s = writer_.Write(name_, static_cast<uint64_t>(offset), piece); !s.ok()) return s;
      offset += static_cast<int64_t>(piece.size());
    }
    return crc;
  }
  absl::Status End() override { return absl::OkStatus(); }

 private:
  const rpc::Manifest& manifest_;
  SafetensorsModelWriter& writer_;
  std::string name_;
};

// Every name a result writes into its directory: its safetensors files (and their index when
// SafetensorsModelWriter writes one), the other files the header lists, config.json,
// report.json and recipe.yaml.
std::set<std::string> ResultFileNames(const v1::ResultHeader& h) {
  std::set<std::string> names, tensor_files;
  for (const v1::TensorInfo& t : h.manifest()) tensor_files.insert(t.file());
  names.insert(tensor_files.begin(), tensor_files.end());
  if (tensor_files.size() > 1 || (tensor_files.size() == 1 && *tensor_files.begin() != "model.safetensors")) {
    names.insert("model.safetensors.index.json");
  }
  for (const v1::ResultFileInfo& f : h.files()) names.insert(f.name());
  if (!h.config_json().empty()) names.insert("config.json");
  if (!h.report_json().empty()) names.insert("report.json");
  if (!h.recipe_yaml().empty()) names.insert("recipe.yaml");
  return names;
}

// The pid of a temp file SafetensorsModelWriter names "<name>.tmp.<pid>", for a <name> in
// `names`; 0 when `file` is not one.
pid_t TempFilePid(const std::string& file, const std::set<std::string>& names) {
  const size_t at = file.rfind(".tmp.");
  if (at == std::string::npos || !names.count(file.substr(0, at))) return 0;
  const std::string digits = file.substr(at + 5);
  int pid = 0;
  if (digits.empty() || !std::all_of(digits.begin(), digits.end(), absl::ascii_isdigit) ||
      !absl::SimpleAtoi(digits, &pid) || pid <= 0) {
    return 0;
  }
  return pid;
}

}  // namespace

absl::Status CheckFetchDir(const std::string& out_dir, const std::set<std::string>& names) {
  std::error_code ec;
  const fs::file_status st = fs::status(out_dir, ec);
  if (ec || !fs::exists(st)) return absl::OkStatus();
  if (!fs::is_directory(st))
    return absl::FailedPreconditionError(absl::StrCat("--out '", out_dir, "' is not a directory"));
  std::vector<fs::path> stale;
  std::set<std::string> kept;
  for (const auto& e : fs::directory_iterator(out_dir, ec)) {
    const std::string f = e.path().filename().string();
    std::error_code fec;
    const bool file = e.is_regular_file(fec) || e.is_symlink(fec);
    if (file && names.count(f)) {  // replaced by this fetch
      kept.insert(f);
      continue;
    }
    if (const pid_t pid = file ? TempFilePid(f, names) : 0; pid > 0) {
      if (kill(pid, 0) == 0 || errno == EPERM) {
        return absl::FailedPreconditionError(absl::StrCat("--out '", out_dir, "' holds '", f, "', a file process ", pid,
                                                          " is writing (another fetch into the same directory?)"));
      }
      stale.push_back(e.path());  // left by an interrupted fetch
      continue;
    }
    return absl::FailedPreconditionError(absl::StrCat(
        "--out '", out_dir, "' already holds '", f, "', which is not a file of this result (it writes ",
        absl::StrJoin(names, ", "),
        "): a fetch would mix two checkpoints or overwrite your files; fetch into a new or empty directory"));
  }
  if (ec) return absl::FailedPreconditionError(absl::StrCat("cannot list --out '", out_dir, "': ", ec.message()));
  // Files of the result's names, but not an earlier fetch (every result has a report.json): a
  // model directory (config.json, model.safetensors, ...) is not replaced either.
  if (!kept.empty() && !kept.count("report.json")) {
    return absl::FailedPreconditionError(absl::StrCat(
        "--out '", out_dir, "' holds ", absl::StrJoin(kept, ", "),
        " but no report.json: it is not an earlier fetch of a result (a model directory?), and a fetch would "
        "overwrite those files; fetch into a new or empty directory"));
  }
  for (const fs::path& p : stale) fs::remove(p, ec);
  return absl::OkStatus();
}

namespace {

// The files of a result, laid out in `out_dir` from its header's `manifest` (decoded from `h`).
absl::StatusOr<std::unique_ptr<SafetensorsModelWriter>> ResultWriter(const v1::ResultHeader& h,
                                                                     const rpc::Manifest& manifest,
                                                                     const std::string& out_dir) {
  if (h.manifest_size() != h.tensors()) {
    return absl::FailedPreconditionError(
        absl::StrCat("the result header lists ", h.manifest_size(), " of its ", h.tensors(),
                     " tensors; writing files needs the whole manifest (a calibrator older than this client?)"));
  }
  std::vector<SafetensorsModelWriter::Placement> placements;
  int64_t manifest_bytes = 0;
  for (const rpc::Manifest::Entry& e : manifest.entries()) {
    placements.push_back({e.name, e.dtype, e.shape, e.file});
    manifest_bytes += e.bytes;
    if (manifest_bytes > (int64_t{1} << 60)) return absl::DataLossError("the result's manifest adds up to over 1 EiB");
  }
  if (manifest_bytes != h.tensor_bytes()) {
    return absl::DataLossError(absl::StrCat("the result's manifest adds up to ", manifest_bytes,
                                            " bytes, its header announces ", h.tensor_bytes()));
  }
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create '", out_dir, "': ", ec.message()));
  absl::StatusOr<std::unique_ptr<SafetensorsModelWriter>> w = SafetensorsModelWriter::Create(out_dir, placements);
  if (w.status().code() == absl::StatusCode::kInvalidArgument) {
    return absl::DataLossError(absl::StrCat("the result's manifest: ", w.status().message()));
  }
  return w;
}

}  // namespace

absl::StatusOr<FetchedResult> FetchResult(grpc::ChannelInterface& channel, const rpc::ClientConfig& config,
                                          const std::string& id) {
  FetchedResult result;
  rpc::ChunkAssembler assembler;
  ResultFileReceiver files;
  absl::Status s = ReadResultStream(
      channel, config, id,
      [&](const v1::ResultHeader& h) {
        result.header = h;
        return files.Begin(h);
      },
      [&](const v1::TensorChunk& chunk, const rpc::DataPieces& data) { return assembler.Add(chunk, data); },
      [&](const v1::ResultFileChunk& chunk) {
        return files.Add(chunk, [&](const std::string& name, std::string bytes) {
          result.files[name] = std::move(bytes);
          return absl::OkStatus();
        });
      });
  if (!s.ok()) return s;
  if (s = files.Finish(); !s.ok()) return s;
  if (s = assembler.Finish(); !s.ok()) return s;
  if (s = CheckTensorCount(assembler.tensors().size(), result.header); !s.ok()) return s;
  result.tensor_bytes = assembler.total_bytes();
  result.tensors = std::move(assembler.tensors());
  return result;
}

namespace {

absl::StatusOr<int64_t> FetchResultToDirImpl(grpc::ChannelInterface& channel, const rpc::ClientConfig& config,
                                             const std::string& id, const std::string& out_dir, bool* out_dir_refused) {
  v1::ResultHeader header;
  std::unique_ptr<SafetensorsModelWriter> writer;
  std::unique_ptr<FileSink> sink;
  std::unique_ptr<rpc::ChunkReceiver> receiver;
  std::optional<rpc::Manifest> manifest;
  rpc::TensorLimits limits;
  limits.max_bytes = int64_t{1} << 50;  // the manifest fixes every size; the disk is the limit
  ResultFileReceiver files;
  auto on_header = [&](const v1::ResultHeader& h) -> absl::Status {
    header = h;
    if (absl::Status s = files.Begin(h); !s.ok()) return s;
    absl::StatusOr<rpc::Manifest> m = rpc::Manifest::FromProto(h.manifest(), limits);
    if (!m.ok()) return absl::DataLossError(absl::StrCat("the result's manifest: ", m.status().message()));
    manifest = *std::move(m);
    if (absl::Status s = CheckFetchDir(out_dir, ResultFileNames(h)); !s.ok()) {
      if (out_dir_refused) *out_dir_refused = true;
      return s;
    }
    absl::StatusOr<std::unique_ptr<SafetensorsModelWriter>> w = ResultWriter(h, *manifest, out_dir);
    if (!w.ok()) return w.status();
    writer = *std::move(w);
    sink = std::make_unique<FileSink>(*manifest, *writer);
    receiver = std::make_unique<rpc::ChunkReceiver>(*sink, limits);
    return absl::OkStatus();
  };
  // A file is written under a temp name as soon as it is whole, and put in place by Commit with
  // the rest.
  auto on_file = [&](const v1::ResultFileChunk& chunk) {
    return files.Add(chunk, [&](const std::string& name, std::string bytes) -> absl::Status {
      absl::Status s = writer->AddFile(name, bytes);
      if (s.code() == absl::StatusCode::kInvalidArgument) return absl::DataLossError(s.message());
      return s;
    });
  };
  absl::Status s = ReadResultStream(
      channel, config, id, on_header,
      [&](const v1::TensorChunk& chunk, const rpc::DataPieces& data) { return receiver->Add(chunk, data); }, on_file);
  if (!s.ok()) return s;
  if (s = files.Finish(); !s.ok()) return s;
  if (s = receiver->Finish(); !s.ok()) return s;
  if (s = CheckTensorCount(receiver->tensors(), header); !s.ok()) return s;
  for (const auto& [file, text] : {std::pair<std::string, std::string>{"config.json", header.config_json()},
                                   {"report.json", header.report_json()},
                                   {"recipe.yaml", header.recipe_yaml()}}) {
    if (text.empty()) continue;
    if (s = writer->AddFile(file, text); !s.ok()) return s;
  }
  if (auto written = writer->Commit(); !written.ok()) return written.status();
  return receiver->total_bytes();
}

}  // namespace

absl::StatusOr<int64_t> FetchResultToDir(grpc::ChannelInterface& channel, const rpc::ClientConfig& config,
                                         const std::string& id, const std::string& out_dir, bool* out_dir_refused) {
  if (out_dir_refused) *out_dir_refused = false;
  // The directories this fetch may create (out_dir and its missing parents, deepest first): a
  // failed fetch removes them again, each only if it is empty, so it leaves nothing behind.
  std::vector<fs::path> missing;
  std::error_code ec;
  fs::path p = fs::absolute(out_dir, ec).lexically_normal();
  if (!ec && p.filename().empty()) p = p.parent_path();  // "a/b/" -> "a/b"
  while (!ec && p != p.parent_path() && !fs::exists(p, ec) && !ec) {
    missing.push_back(p);
    p = p.parent_path();
  }
  absl::StatusOr<int64_t> r = FetchResultToDirImpl(channel, config, id, out_dir, out_dir_refused);
  if (!r.ok()) {
    for (const fs::path& dir : missing) fs::remove(dir, ec);
  }
  return r;
}

}  // namespace lowbit::cli
