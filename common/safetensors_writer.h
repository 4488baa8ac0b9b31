// Writes a safetensors model directory whose tensors arrive piece by piece and in any order (a
// network stream), without holding them in memory: every file is laid out up front
// (LayoutSafetensorsFile, the layout WriteSafetensorsModel writes), created under a temp name, and
// filled as the pieces come: streamed with O_DIRECT from a background thread (StreamingFileWriter,
// no page-cache copy) while a file's pieces come in file order, else written in place with pwrite.
// Commit fsyncs every file, renames it into place and writes model.safetensors.index.json last
// (for more than one file, or one not named model.safetensors), so a reader never sees a
// half-written model. A writer destroyed without Commit removes its temp files.
#ifndef LOWBIT_COMMON_SAFETENSORS_WRITER_H_
#define LOWBIT_COMMON_SAFETENSORS_WRITER_H_

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/safetensors.h"
#include "common/streaming_file_writer.h"

namespace lowbit {

class SafetensorsModelWriter {
 public:
  // Where one tensor goes: name, dtype and shape, and the file (a plain name ending in
  // .safetensors) that holds it.
  struct Placement {
    std::string name;
    DType dtype;
    Shape shape;
    std::string file;
  };
  // InvalidArgument for a file name with a directory part or without the .safetensors suffix, a
  // name given twice, an invalid shape; FailedPrecondition when `dir` already holds a
  // *.safetensors file or an index this model would not replace (a reader would mix the two
  // models); Internal (or ResourceExhausted, disk full) when a file cannot be created. Files of
  // the same names are replaced on Commit.
  static absl::StatusOr<std::unique_ptr<SafetensorsModelWriter>> Create(const std::string& dir,
                                                                        std::span<const Placement> tensors);
  ~SafetensorsModelWriter();
  SafetensorsModelWriter(const SafetensorsModelWriter&) = delete;
  SafetensorsModelWriter& operator=(const SafetensorsModelWriter&) = delete;

  // Writes `bytes` at byte `offset` of tensor `name`. InvalidArgument past the tensor's end or for
  // an unknown name; Internal (ResourceExhausted: disk full) for a failed write.
  absl::Status Write(const std::string& name, uint64_t offset, std::span<const uint8_t> bytes);
  // A small file (config.json...) to put in the directory with the model, written now under a
  // temp name and put in place by Commit. InvalidArgument for a name with a directory part.
  absl::Status AddFile(const std::string& name, std::string_view contents);
  // Makes every file durable (their fsyncs run at once, so the filesystem can commit them
  // together), renames them into place, the index last, and syncs the directory once. Returns the
  // names of the files.
  absl::StatusOr<std::vector<std::string>> Commit();

  // Tensor bytes that went through the streaming path (the rest were written in place).
  uint64_t streamed_bytes() const { return streamed_bytes_; }

 private:
  // A tensor file starts empty. From the piece right after its header it is streamed (`seq`:
  // O_DIRECT, a writer thread) while its pieces come in file order, as a FetchResult sends them;
  // otherwise — or from the first piece out of order — it is laid out at full size and written in
  // place (`fd`, pwrite). One file is streamed at a time.
  struct File {
    std::string name, tmp_path;
    uint64_t size = 0;                     // laid out
    const std::string* prefix = nullptr;   // its header (tensor files), in layouts_
    std::unique_ptr<StreamingFileWriter> seq;
    int fd = -1;
    uint64_t unflushed = 0;  // bytes pwritten since the last writeback start
    bool durable = false;    // streamed whole, synced and closed
  };
  // Creates file `name` empty under its temp name (removed by the destructor from here on):
  // `size` bytes laid out, `prefix` its header (tensor files) or null.
  absl::Status CreateFile(const std::string& name, uint64_t size, const std::string* prefix);
  // Opens `f` for pwrite at its full size; `header`: writes its header (nothing was streamed).
  static absl::Status OpenInPlace(File& f, bool header);
  // Makes `f` writable in place: ends its streaming, or opens it (with its header unless it
  // was streamed whole). A no-op for a file open in place already.
  static absl::Status OpenForPwrite(File& f);
  // Ends the streaming of `f`: durable if it is whole, else open for pwrite at its full size.
  static absl::Status EndStreaming(File& f);
  struct Where {
    size_t file;
    uint64_t offset;  // of the tensor's first byte in the file
    const SafetensorsEntry* entry;
  };
  SafetensorsModelWriter() = default;
  void CloseAll();

  std::string dir_;
  std::vector<File> files_;
  std::vector<SafetensorsLayout> layouts_;  // one per file
  std::map<std::string, Where> where_;
  std::map<std::string, std::string> weight_map_;  // tensor -> file
  uint64_t total_bytes_ = 0;
  uint64_t streamed_bytes_ = 0;
  int streaming_ = -1;  // the index of the file being streamed, -1 when none
  bool indexed_ = false;  // writes model.safetensors.index.json
  bool committed_ = false;
};

}  // namespace lowbit

#endif  // LOWBIT_COMMON_SAFETENSORS_WRITER_H_
