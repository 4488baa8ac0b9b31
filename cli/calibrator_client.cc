#include "cli/calibrator_client.h"

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cli/connection.h"
#include "common/file_util.h"
#include "common/safetensors.h"
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
                               job.progress().num_layers(),
                               job.progress().phase());
  }
  return absl::StrFormat("%-26s %-10s %-28s %-20s %s%s", job.id(), JobStateName(job.state()), progress, s.model(),
                         recipe, job.error_message().empty() ? "" : "  error: " + job.error_message());
}

absl::StatusOr<v1::UploadDatasetResponse> UploadDatasetFile(CalibratorStubT& stub, const rpc::ClientConfig& config,
                                                            const std::string& path, const std::string& name,
                                                            int64_t chunk_bytes) {
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
  Prepare(&ctx, config);
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
                                                       const std::string& dir, const std::string& name,
                                                       int64_t chunk_bytes) {
  std::vector<fs::path> files;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    if (e.is_regular_file()) files.push_back(e.path());
  }
  if (ec) return absl::NotFoundError(absl::StrCat("cannot list model directory '", dir, "': ", ec.message()));
  std::sort(files.begin(), files.end());
  grpc::ClientContext ctx;
  Prepare(&ctx, config);
  v1::UploadModelResponse resp;
  auto writer = rpc::RawClientWriter(&channel, rpc::kUploadModelPath, &ctx, &resp);
  for (size_t i = 0; i < files.size(); ++i) {
    auto mapped = MappedFile::Open(files[i].string());
    if (!mapped.ok()) return mapped.status();
    if (!SendModelFile(*writer, *mapped, files[i].filename().string(), i == 0 ? name : "", chunk_bytes)) break;
  }
  writer->WritesDone();
  auto st = writer->Finish();
  if (!st.ok()) return StatusOf(st);
  return resp;
}

absl::StatusOr<v1::Job> WaitForJob(CalibratorStubT& stub, const rpc::ClientConfig& config, const std::string& id,
                                   bool bar) {
  const bool tty = bar && isatty(2);
  grpc::ClientContext ctx;
  Prepare(&ctx, config, /*with_deadline=*/false);
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
      const std::string line = absl::StrFormat(
          "[%s%s] layer %d/%d %-10s %-36s loss %.4g  %.1fs  %s", std::string(filled, '#'),
          std::string(width - filled, '.'), std::min(p.layer() + 1, p.num_layers()), p.num_layers(), p.phase(),
          p.module().size() > 36 ? p.module().substr(p.module().size() - 36) : p.module(), p.loss(), p.elapsed_s(), eta);
      if (tty) {
        std::fprintf(stderr, "\r%-120s", line.c_str());
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

absl::StatusOr<FetchedResult> FetchResult(grpc::ChannelInterface& channel, const rpc::ClientConfig& config,
                                          const std::string& id, int64_t chunk_bytes) {
  grpc::ClientContext ctx;
  Prepare(&ctx, config);
  v1::FetchResultRequest req;
  req.set_id(id);
  req.set_chunk_bytes(chunk_bytes);
  auto reader = rpc::RawClientReader(&channel, rpc::kFetchResultPath, &ctx, req);
  grpc::ByteBuffer raw;
  v1::FetchResultResponse resp;
  rpc::SplitMessage split;  // reused: its slices are released when the next message arrives
  FetchedResult result;
  bool have_header = false;
  rpc::ChunkAssembler assembler;
  absl::Status bad;
  while (bad.ok() && reader->Read(&raw)) {
    bad = rpc::DecodeWithBulk(raw, rpc::kChunkData, &resp, &split);
    if (!bad.ok()) {
      bad = absl::DataLossError(absl::StrCat("FetchResult response: ", bad.message()));
    } else if (resp.has_header()) {
      result.header = resp.header();
      have_header = true;
    } else if (resp.has_chunk()) {
      bad = assembler.Add(resp.chunk(), split.data);
    }
  }
  if (!bad.ok()) {
    ctx.TryCancel();
    reader->Finish();
    return bad;
  }
  auto st = reader->Finish();
  if (!st.ok()) return StatusOf(st);
  if (absl::Status s = assembler.Finish(); !s.ok()) return s;
  if (!have_header) return absl::DataLossError("the result stream had no header");
  if (static_cast<int>(assembler.tensors().size()) != result.header.tensors()) {
    return absl::DataLossError(absl::StrCat("received ", assembler.tensors().size(), " tensors, the header announced ",
                                            result.header.tensors()));
  }
  result.tensor_bytes = assembler.total_bytes();
  result.tensors = std::move(assembler.tensors());
  return result;
}

absl::StatusOr<int64_t> FetchResultToDir(grpc::ChannelInterface& channel, const rpc::ClientConfig& config,
                                         const std::string& id, const std::string& out_dir, int64_t chunk_bytes) {
  auto fetched = FetchResult(channel, config, id, chunk_bytes);
  if (!fetched.ok()) return fetched.status();
  const v1::ResultHeader& header = fetched->header;
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create '", out_dir, "': ", ec.message()));
  for (const auto& [file, text] : {std::pair<std::string, std::string>{"config.json", header.config_json()},
                                   {"report.json", header.report_json()},
                                   {"recipe.yaml", header.recipe_yaml()}}) {
    if (text.empty()) continue;
    if (absl::Status s = AtomicWriteFile((fs::path(out_dir) / file).string(), text); !s.ok()) return s;
  }
  std::vector<NamedTensor> tensors;
  for (auto& [name, t] : fetched->tensors) tensors.push_back({name, std::move(t)});
  auto written = WriteSafetensorsModel(out_dir, std::move(tensors), uint64_t{5} << 30);
  if (!written.ok()) return written.status();
  return fetched->tensor_bytes;
}

}  // namespace lowbit::cli
