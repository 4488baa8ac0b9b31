// Client-side operations on the calibrator, shared by the CLI commands and `lowbit demo`:
// uploads (chunked, CRC-32C), waiting on a job with a progress bar, fetching a result.
#ifndef LOWBIT_CLI_CALIBRATOR_CLIENT_H_
#define LOWBIT_CLI_CALIBRATOR_CLIENT_H_

#include <map>
#include <set>
#include <string>

#include "absl/status/statusor.h"
#include "common/tensor.h"
#include "grpcpp/channel.h"
#include "lowbit/v1/calibrator.grpc.pb.h"
#include "rpc/client.h"

namespace lowbit::cli {

using CalibratorStubT = v1::CalibratorService::StubInterface;

// .jsonl, or .bin with its .idx beside it.
absl::StatusOr<v1::UploadDatasetResponse> UploadDatasetFile(CalibratorStubT& stub, const rpc::ClientConfig& config,
                                                            const std::string& path, const std::string& name);
// Every regular file directly in `dir` (config.json, *.safetensors, tokenizer files...).
// UploadModel and FetchResult are raw streams on `channel` (rpc/raw_stream.h): uploaded data are
// slices of the mapped files, fetched data are copied from the receive slices into the tensors.
absl::StatusOr<v1::UploadModelResponse> UploadModelDir(grpc::ChannelInterface& channel, const rpc::ClientConfig& config,
                                                       const std::string& dir, const std::string& name);
// Follows WatchJob until the job ends; draws a progress line on stderr when `bar`.
absl::StatusOr<v1::Job> WaitForJob(CalibratorStubT& stub, const rpc::ClientConfig& config, const std::string& id,
                                   bool bar);
// FetchResult into memory: the header, the checkpoint's other files (tokenizer.json,
// generation_config.json, ... by name) and every tensor, reassembled and CRC-checked.
struct FetchedResult {
  v1::ResultHeader header;
  std::map<std::string, std::string> files;
  std::map<std::string, Tensor> tensors;
  int64_t tensor_bytes = 0;
};
absl::StatusOr<FetchedResult> FetchResult(grpc::ChannelInterface& channel, const rpc::ClientConfig& config,
                                          const std::string& id);
// FetchResult into `out_dir`: config.json, report.json, recipe.yaml, the checkpoint's other
// files (tokenizer.json, generation_config.json, ... as the header lists them) and its
// safetensors files, laid out from the header's manifest and written in place as the chunks
// arrive (memory stays O(chunk) for the tensors; each other file is held whole until written);
// they equal the server's files byte for byte. Nothing appears in `out_dir` unless the whole
// result arrived intact: every file is committed together. Returns the tensor bytes received.
// Chunk sizes (here and in the uploads): config.chunk_bytes.
// `out_dir` may exist only if it holds nothing but files of this result (fetching a result again
// into its directory replaces them): anything else (CheckFetchDir) is FailedPrecondition, with
// *out_dir_refused set, before a file is written. A failed fetch removes `out_dir` if it made it.
absl::StatusOr<int64_t> FetchResultToDir(grpc::ChannelInterface& channel, const rpc::ClientConfig& config,
                                         const std::string& id, const std::string& out_dir,
                                         bool* out_dir_refused = nullptr);
// OK when `out_dir` does not exist, or is a directory that holds only files named in `names`
// (the files a result writes), among them report.json (an earlier fetch, not a model directory
// of the same file names), and temp files "<name>.tmp.<pid>" that an interrupted fetch left
// (their process is gone), which it removes; else FailedPrecondition naming the first other
// entry (or a temp file whose process still runs).
absl::Status CheckFetchDir(const std::string& out_dir, const std::set<std::string>& names);
std::string JobStateName(v1::JobState state);
// One line: id, state, progress, model, recipe.
std::string JobLine(const v1::Job& job);

}  // namespace lowbit::cli

#endif  // LOWBIT_CLI_CALIBRATOR_CLIENT_H_
