// safetensors: reading (memory-mapped, every offset, length, dtype and shape checked against
// the file), sharded model directories (model.safetensors.index.json), and atomic writing with
// shards at a size limit. Format: shared/reference/compressed-tensors-format-details.md §2.
#ifndef LOWBIT_COMMON_SAFETENSORS_H_
#define LOWBIT_COMMON_SAFETENSORS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/file_util.h"
#include "common/tensor.h"

namespace lowbit {

inline constexpr uint64_t kMaxSafetensorsHeaderBytes = 100'000'000;

struct SafetensorsEntry {
  std::string name;
  DType dtype;
  Shape shape;
  uint64_t begin = 0;  // relative to the start of the data buffer
  uint64_t end = 0;    // exclusive
};

struct SafetensorsHeader {
  std::vector<SafetensorsEntry> entries;  // sorted by offset
  std::map<std::string, std::string> metadata;
  uint64_t data_start = 0;  // 8 + header length
};

// Parses and validates a whole safetensors file image. Every failure is an
// InvalidArgumentError naming the problem (and the tensor, where there is one).
absl::StatusOr<SafetensorsHeader> ParseSafetensors(std::span<const uint8_t> file);

// One memory-mapped .safetensors file.
class SafetensorsFile {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);

  const SafetensorsHeader& header() const { return header_; }
  std::vector<std::string> names() const;
  bool Has(const std::string& name) const { return index_.count(name) > 0; }
  // The header entry of `name`, or nullptr.
  const SafetensorsEntry* Find(const std::string& name) const;
  // A read-only view into the map (kept alive by the returned tensor).
  absl::StatusOr<Tensor> Get(const std::string& name) const;
  const std::string& path() const { return file_->path(); }

 private:
  std::shared_ptr<MappedFile> file_;
  SafetensorsHeader header_;
  std::map<std::string, size_t> index_;
};

// A model directory: model.safetensors.index.json when present (every listed shard must exist
// and hold the tensors the index says it does), else every *.safetensors file in it.
class SafetensorsModel {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsModel>> Open(const std::string& dir);

  std::vector<std::string> names() const;  // sorted
  // Every tensor by file (in files_ order: the shards sorted by name) and by offset in it: the
  // order that reads each file front to back, and lets a receiver write each file front to back.
  std::vector<std::string> names_in_file_order() const;
  bool Has(const std::string& name) const { return where_.count(name) > 0; }
  absl::StatusOr<Tensor> Get(const std::string& name) const;  // NotFound for an unknown name
  const SafetensorsEntry* Find(const std::string& name) const;
  // The name (no directory) of the file that holds `name`, or "" for an unknown name.
  std::string FileOf(const std::string& name) const;

 private:
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, size_t> where_;  // tensor -> index into files_
};

struct NamedTensor {
  std::string name;
  Tensor tensor;
};

// The layout of one .safetensors file: tensors by descending dtype size then name, the header
// space-padded to a multiple of 8, so every tensor is naturally aligned; `__metadata__` is
// {"format": "pt"} plus `metadata`. `tensors` needs name, dtype and shape (begin/end are set
// here). InvalidArgument for a name given twice or an invalid shape.
// The largest data section LayoutSafetensorsFile lays out (1 PiB; sizes stay far from overflow).
inline constexpr uint64_t kMaxTensorBytes = uint64_t{1} << 50;
struct SafetensorsLayout {
  std::string prefix;                     // the 8-byte header length, then the JSON header
  std::vector<SafetensorsEntry> entries;  // in file order; begin/end relative to prefix.size()
  uint64_t file_size() const { return prefix.size() + (entries.empty() ? 0 : entries.back().end); }
};
absl::StatusOr<SafetensorsLayout> LayoutSafetensorsFile(std::vector<SafetensorsEntry> tensors,
                                                        const std::map<std::string, std::string>& metadata = {});

// model.safetensors.index.json of a sharded model: `weight_map` is tensor -> file.
std::string SafetensorsIndexJson(const std::map<std::string, std::string>& weight_map, uint64_t total_size);

// Writes one .safetensors file atomically, laid out by LayoutSafetensorsFile.
absl::Status WriteSafetensorsFile(const std::string& path, std::span<const NamedTensor> tensors,
                                  const std::map<std::string, std::string>& metadata = {});

// Writes `tensors` into `dir`: model.safetensors when they fit in `max_shard_bytes`, else
// model-0000i-of-0000k.safetensors shards (tensors in name order) plus
// model.safetensors.index.json (written last). Returns the names of the files written.
absl::StatusOr<std::vector<std::string>> WriteSafetensorsModel(
    const std::string& dir, std::vector<NamedTensor> tensors, uint64_t max_shard_bytes);

}  // namespace lowbit

#endif  // LOWBIT_COMMON_SAFETENSORS_H_
