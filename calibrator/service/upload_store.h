// Uploaded calibration datasets and models, kept under the state directory until removed:
//   <state_dir>/datasets/<name>/data.jsonl            (or data.bin + data.idx)
//   <state_dir>/models/<name>/<file>...               (a Hugging Face model directory)
//   <state_dir>/tmp/                                   uploads in progress (emptied at start)
// An upload is written into its own temp directory, checked (size limit, per-message order,
// CRC-32C, the contents parse: tokens for a dataset, a loadable Llama-family model for a model)
// and renamed into place only when complete, so a half upload never appears. Uploads are
// immutable: a name that exists is AlreadyExists (jobs that use it stay reproducible).
//
// Errors: InvalidArgument (bad name / format / file name, messages out of order, a stream that
// ends without its final message, contents that do not parse, a dataset sequence without
// tokens), DataLoss (CRC-32C mismatch), ResourceExhausted (over max_upload_bytes),
// AlreadyExists. Messages name files as the client sent them (the dataset's name, the model's
// file names), never by the server's temp paths.
//
// UploadModel's first message carries the model name, alone or with the first piece of the
// first file; the first piece of every file carries its file_name.
#ifndef LOWBIT_CALIBRATOR_SERVICE_UPLOAD_STORE_H_
#define LOWBIT_CALIBRATOR_SERVICE_UPLOAD_STORE_H_

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "calibrator/dataset.h"
#include "common/streaming_file_writer.h"
#include "lowbit/v1/calibrator.pb.h"
#include "rpc/wire.h"

namespace lowbit::calibrator {

class UploadStore {
 public:
  // Creates the directories and empties tmp/.
  static absl::StatusOr<std::unique_ptr<UploadStore>> Open(const std::string& state_dir, int64_t max_upload_bytes);

  // The token file of dataset `name` (data.jsonl or data.bin). NotFound when absent.
  absl::StatusOr<std::string> DatasetFile(const std::string& name) const;
  // The directory of uploaded model `name`. NotFound when absent.
  absl::StatusOr<std::string> ModelDir(const std::string& name) const;
  int64_t max_upload_bytes() const { return max_upload_bytes_; }

  struct Entry {
    v1::UploadKind kind = v1::UPLOAD_KIND_UNSPECIFIED;
    std::string name;
    int64_t bytes = 0;
    int64_t modified_unix_ms = 0;
  };
  // Every complete upload: datasets, then models, each by name.
  std::vector<Entry> List() const;
  // Removing an upload takes two steps: MoveAside renames it into tmp/ (quick: from then on it is
  // gone for jobs, and Open empties tmp/, so a crash before Purge finishes the removal at the next
  // start); Purge deletes its files. InvalidArgument (kind, name), NotFound.
  struct Removal {
    Entry entry;  // as it was
    std::string trash;
  };
  absl::StatusOr<Removal> MoveAside(v1::UploadKind kind, const std::string& name) const;
  void Purge(const Removal& removal) const;

  class DatasetUpload {
   public:
    ~DatasetUpload();
    absl::Status Add(const v1::UploadDatasetRequest& msg);
    absl::StatusOr<v1::UploadDatasetResponse> Finish();  // after the stream ended
    int64_t bytes() const { return bytes_; }

   private:
    friend class UploadStore;
    // The received tokens, parsed with the dataset's name as the source in messages.
    absl::StatusOr<std::vector<TokenSequence>> ParseUploadedDataset() const;
    const UploadStore* store_ = nullptr;
    std::string tmp_dir_, name_, format_;
    std::FILE* data_ = nullptr;
    std::FILE* idx_ = nullptr;
    int64_t bytes_ = 0;
    uint32_t crc_data_ = 0;
    int64_t messages_ = 0;
    bool last_seen_ = false;
    uint32_t expected_crc_ = 0;
  };
  absl::StatusOr<std::unique_ptr<DatasetUpload>> BeginDataset() const;

  class ModelUpload {
   public:
    ~ModelUpload();
    // `msg`'s fields with its data given apart (rpc::DecodeWithBulk), written from there.
    absl::Status Add(const v1::UploadModelRequest& msg, const rpc::DataPieces& data);
    absl::StatusOr<v1::UploadModelResponse> Finish();
    int64_t bytes() const { return bytes_; }

   private:
    friend class UploadStore;
    absl::Status CloseFile();
    const UploadStore* store_ = nullptr;
    std::string tmp_dir_, name_;
    std::string file_name_;                      // the file being received ("" between files)
    std::unique_ptr<StreamingFileWriter> file_;  // its writer (O_DIRECT, a background thread)
    uint32_t file_crc_ = 0;
    int64_t bytes_ = 0;
    int32_t files_ = 0;
    int64_t messages_ = 0;
    std::vector<std::string> done_;
  };
  absl::StatusOr<std::unique_ptr<ModelUpload>> BeginModel() const;

 private:
  absl::StatusOr<std::string> NewTempDir(const std::string& kind) const;
  std::string state_dir_;
  int64_t max_upload_bytes_ = 0;
};

}  // namespace lowbit::calibrator

#endif  // LOWBIT_CALIBRATOR_SERVICE_UPLOAD_STORE_H_
