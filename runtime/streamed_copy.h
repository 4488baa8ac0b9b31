// A streamed load's checkpoint written to the state directory as its tensors arrive, so that a
// restarted runtime can load the model again (LoadJournal records it once the load succeeded).
// It is written into "<dir>.tmp" and renamed to "<dir>" by Commit, so a copy is complete or
// absent; one never committed is removed when the object goes (and, after a crash, by the next
// start: LoadJournal::Open removes copies no entry names).
#ifndef LOWBIT_RUNTIME_STREAMED_COPY_H_
#define LOWBIT_RUNTIME_STREAMED_COPY_H_

#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/safetensors_writer.h"
#include "common/tensor.h"

namespace lowbit::runtime {

class StreamedCopy {
 public:
  // The one tensor file a copy holds (placements name it).
  static constexpr char kTensorFile[] = "model.safetensors";
  // The copy goes to `base`/`name` (`name` relative to the state directory `base`).
  // `placements`: every tensor, in the order they will come, when the stream announced them (a
  // manifest); empty when it did not (AddAll then).
  static absl::StatusOr<std::unique_ptr<StreamedCopy>> Begin(
      const std::string& base, const std::string& name, const std::string& config_json,
      const std::vector<SafetensorsModelWriter::Placement>& placements);
  ~StreamedCopy();
  StreamedCopy(const StreamedCopy&) = delete;
  StreamedCopy& operator=(const StreamedCopy&) = delete;

  // One tensor of the announced placements.
  absl::Status Add(const std::string& name, const Tensor& tensor) { return Write(name, 0, tensor.bytes()); }
  // Bytes at `offset` of a tensor of the announced placements (one passed on as it arrives).
  absl::Status Write(const std::string& name, uint64_t offset, std::span<const uint8_t> bytes);
  // Every tensor at once (a stream without a manifest).
  absl::Status AddAll(const std::map<std::string, Tensor>& tensors);
  // Makes the copy's files durable (written and fsynced, still under "<dir>.tmp"): the slow part
  // of Commit, which a caller can do before taking a lock.
  absl::Status Sync();
  // Makes the copy durable (Sync, unless done) and puts it in place.
  absl::Status Commit();
  const std::string& relative_name() const { return name_; }

 private:
  StreamedCopy(const std::string& base, std::string name, std::string config_json)
      : name_(std::move(name)), dir_(base + "/" + name_), tmp_(dir_ + ".tmp"), config_json_(std::move(config_json)) {}
  absl::Status Fail(const absl::Status& s) const;

  const std::string name_, dir_, tmp_, config_json_;
  std::unique_ptr<SafetensorsModelWriter> writer_;
  bool synced_ = false;
  bool committed_ = false;
};

}  // namespace lowbit::runtime

#endif  // LOWBIT_RUNTIME_STREAMED_COPY_H_
