#include "common/safetensors.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/streaming_file_writer.h"
#include "nlohmann/json.hpp"

namespace lowbit {
namespace {

using nlohmann::json;

absl::Status Invalid(absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("safetensors: ", what));
}

bool ReadU64(const json& j, uint64_t& out) {
  if (!j.is_number_unsigned() && !(j.is_number_integer() && j.get<int64_t>() >= 0)) return false;
  out = j.get<uint64_t>();
  return true;
}

absl::StatusOr<SafetensorsEntry> ParseEntry(const std::string& name, const json& e) {
  auto bad = [&](absl::string_view what) { return Invalid(absl::StrCat("tensor '", name, "': ", what)); };
  if (!e.is_object()) return bad("entry is not an object");
  auto dt = e.find("dtype");
  if (dt == e.end() || !dt->is_string()) return bad("missing dtype");
  std::optional<DType> dtype = ParseDType(dt->get<std::string>());
  if (!dtype) return bad(absl::StrCat("unsupported dtype ", dt->get<std::string>()));
  SafetensorsEntry entry{name, *dtype, {}, 0, 0};
  auto shape = e.find("shape");
  if (shape == e.end() || !shape->is_array()) return bad("missing shape");
  for (const json& d : *shape) {
    uint64_t v;
    if (!ReadU64(d, v) || v > (uint64_t{1} << 62)) return bad(absl::StrCat("bad dimension ", d.dump()));
    entry.shape.push_back(static_cast<int64_t>(v));
  }
  absl::StatusOr<int64_t> numel = NumElements(entry.shape);
  if (!numel.ok()) return bad(numel.status().message());
  auto offsets = e.find("data_offsets");
  if (offsets == e.end() || !offsets->is_array() || offsets->size() != 2 ||
      !ReadU64((*offsets)[0], entry.begin) || !ReadU64((*offsets)[1], entry.end)) {
    return bad("data_offsets must be [begin, end]");
  }
  if (entry.end < entry.begin) return bad("data_offsets end before begin");
  unsigned __int128 want = static_cast<unsigned __int128>(*numel) * DTypeSize(entry.dtype);
  if (want != entry.end - entry.begin) {
    return bad(absl::StrCat("shape ", ShapeString(entry.shape), " of ", std::string(DTypeName(entry.dtype)), " needs ",
                            static_cast<uint64_t>(want), " bytes but data_offsets span ",
                            entry.end - entry.begin));
  }
  return entry;
}

}  // namespace

absl::StatusOr<SafetensorsHeader> ParseSafetensors(std::span<const uint8_t> file) {
  if (file.size() < 8) return Invalid(absl::StrCat("file of ", file.size(), " bytes is shorter than the 8-byte header length"));
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | file[i];
  if (n > kMaxSafetensorsHeaderBytes) return Invalid(absl::StrCat("header length ", n, " exceeds the 100 MB limit"));
  if (n > file.size() - 8) {
    return Invalid(absl::StrCat("header length ", n, " is larger than the file (", file.size(), " bytes)"));
  }
  const char* text = reinterpret_cast<const char*>(file.data() + 8);
  if (n == 0 || text[0] != '{') return Invalid("header is not a JSON object");

  // Duplicate top-level names would be merged silently by the JSON library: catch them here.
  std::set<std::string> seen;
  std::string duplicate;
  json::parser_callback_t on_event = [&](int depth, json::parse_event_t event, json& parsed) {
    if (depth == 1 && event == json::parse_event_t::key && !seen.insert(parsed.get<std::string>()).second) {
      duplicate = parsed.get<std::string>();
    }
    return true;
  };
  json header = json::parse(text, text + n, on_event, /*allow_exceptions=*/false);
  if (header.is_discarded() || !header.is_object()) return Invalid("header is not valid JSON");
  if (!duplicate.empty()) return Invalid(absl::StrCat("tensor '", duplicate, "' appears twice"));

  SafetensorsHeader out;
  out.data_start = 8 + n;
  for (auto& [key, value] : header.items()) {
    if (key == "__metadata__") {
      if (!value.is_object()) return Invalid("__metadata__ must be an object");
      for (auto& [mk, mv] : value.items()) {
        if (!mv.is_string()) return Invalid(absl::StrCat("__metadata__ value of '", mk, "' is not a string"));
        out.metadata[mk] = mv.get<std::string>();
      }
      continue;
    }
    absl::StatusOr<SafetensorsEntry> entry = ParseEntry(key, value);
    if (!entry.ok()) return entry.status();
    out.entries.push_back(*std::move(entry));
  }
  std::sort(out.entries.begin(), out.entries.end(), [](const auto& a, const auto& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t cursor = 0;
  for (const SafetensorsEntry& e : out.entries) {
    if (e.begin != cursor) {
      return Invalid(absl::StrCat("tensor '", e.name, "' starts at ", e.begin, " but the previous tensor ends at ",
                                  cursor, e.begin < cursor ? " (overlap)" : " (gap)"));
    }
    cursor = e.end;
  }
  uint64_t data_bytes = file.size() - out.data_start;
  if (cursor != data_bytes) {
    return Invalid(absl::StrCat("tensors span ", cursor, " data bytes but the file holds ", data_bytes,
                                cursor > data_bytes ? " (truncated file?)" : " (trailing bytes)"));
  }
  return out;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  absl::StatusOr<std::shared_ptr<MappedFile>> mapped = MappedFile::Open(path);
  if (!mapped.ok()) return mapped.status();
  absl::StatusOr<SafetensorsHeader> header = ParseSafetensors((*mapped)->bytes());
  if (!header.ok()) {
    return absl::Status(header.status().code(), absl::StrCat(path, ": ", header.status().message()));
  }
  auto f = std::unique_ptr<SafetensorsFile>(new SafetensorsFile());
  f->file_ = *std::move(mapped);
  f->header_ = *std::move(header);
  for (size_t i = 0; i < f->header_.entries.size(); ++i) f->index_[f->header_.entries[i].name] = i;
  return f;
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  for (const auto& [name, i] : index_) out.push_back(name);
  return out;
}

const SafetensorsEntry* SafetensorsFile::Find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &header_.entries[it->second];
}

absl::StatusOr<Tensor> SafetensorsFile::Get(const std::string& name) const {
  const SafetensorsEntry* e = Find(name);
  if (e == nullptr) return absl::NotFoundError(absl::StrCat("tensor '", name, "' not in ", file_->path()));
  return Tensor::View(e->dtype, e->shape, file_->bytes().data() + header_.data_start + e->begin, file_);
}

absl::StatusOr<std::unique_ptr<SafetensorsModel>> SafetensorsModel::Open(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return absl::NotFoundError(absl::StrCat("model directory ", dir, " does not exist"));
  auto model = std::unique_ptr<SafetensorsModel>(new SafetensorsModel());
  std::map<std::string, std::string> expected;  // tensor -> shard, from the index
  std::vector<std::string> shard_files;
  fs::path index_path = fs::path(dir) / "model.safetensors.index.json";
  if (fs::exists(index_path, ec)) {
    absl::StatusOr<std::string> text = ReadFileToString(index_path.string());
    if (!text.ok()) return text.status();
    json index = json::parse(*text, nullptr, /*allow_exceptions=*/false);
    if (index.is_discarded() || !index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(index_path.string(), ": not a safetensors index (needs a weight_map object)"));
    }
    std::set<std::string> shards;
    for (auto& [tensor, shard] : index["weight_map"].items()) {
      if (!shard.is_string() || shard.get<std::string>().find('/') != std::string::npos) {
        return absl::InvalidArgumentError(absl::StrCat(index_path.string(), ": bad shard name for '", tensor, "'"));
      }
      expected[tensor] = shard.get<std::string>();
      shards.insert(shard.get<std::string>());
    }
    shard_files.assign(shards.begin(), shards.end());
  } else {
    for (const auto& e : fs::directory_iterator(dir, ec)) {
      if (e.path().extension() == ".safetensors") shard_files.push_back(e.path().filename().string());
    }
    std::sort(shard_files.begin(), shard_files.end());
    if (shard_files.empty()) return absl::NotFoundError(absl::StrCat("no *.safetensors files in ", dir));
  }
  for (const std::string& shard : shard_files) {
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> f = SafetensorsFile::Open((fs::path(dir) / shard).string());
    if (!f.ok()) return f.status();
    for (const std::string& name : (*f)->names()) {
      if (!model->where_.emplace(name, model->files_.size()).second) {
        return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' appears in more than one shard of ", dir));
      }
      if (!expected.empty() && expected.count(name) && expected[name] != shard) {
        return absl::InvalidArgumentError(absl::StrCat("index says '", name, "' is in ", expected[name], " but it is in ", shard));
      }
    }
    model->files_.push_back(*std::move(f));
  }
  for (const auto& [tensor, shard] : expected) {
    if (!model->where_.count(tensor)) {
      return absl::InvalidArgumentError(absl::StrCat("index lists '", tensor, "' in ", shard, " but the shard does not hold it"));
    }
  }
  return model;
}

std::vector<std::string> SafetensorsModel::names() const {
  std::vector<std::string> out;
  for (const auto& [name, i] : where_) out.push_back(name);
  return out;
}

std::vector<std::string> SafetensorsModel::names_in_file_order() const {
  std::vector<std::pair<std::pair<size_t, uint64_t>, std::string>> order;  // ((file, begin), name)
  for (const auto& [name, i] : where_) order.push_back({{i, files_[i]->Find(name)->begin}, name});
  std::sort(order.begin(), order.end());
  std::vector<std::string> out;
  for (auto& [key, name] : order) out.push_back(std::move(name));
  return out;
}

absl::StatusOr<Tensor> SafetensorsModel::Get(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) return absl::NotFoundError(absl::StrCat("model has no tensor '", name, "'"));
  return files_[it->second]->Get(name);
}

const SafetensorsEntry* SafetensorsModel::Find(const std::string& name) const {
  auto it = where_.find(name);
  return it == where_.end() ? nullptr : files_[it->second]->Find(name);
}

std::string SafetensorsModel::FileOf(const std::string& name) const {
  auto it = where_.find(name);
  return it == where_.end() ? "" : std::filesystem::path(files_[it->second]->path()).filename().string();
}

absl::StatusOr<SafetensorsLayout> LayoutSafetensorsFile(std::vector<SafetensorsEntry> tensors,
                                                        const std::map<std::string, std::string>& metadata) {
  std::sort(tensors.begin(), tensors.end(), [](const SafetensorsEntry& a, const SafetensorsEntry& b) {
    const size_t sa = DTypeSize(a.dtype), sb = DTypeSize(b.dtype);
    return sa != sb ? sa > sb : a.name < b.name;
  });
  json header = json::object();
  json meta = json::object();
  meta["format"] = "pt";
  for (const auto& [k, v] : metadata) meta[k] = v;
  header["__metadata__"] = meta;
  uint64_t offset = 0;
  for (SafetensorsEntry& t : tensors) {
    if (header.contains(t.name)) return absl::InvalidArgumentError(absl::StrCat("tensor '", t.name, "' given twice"));
    absl::StatusOr<int64_t> numel = NumElements(t.shape);
    if (!numel.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", t.name, "': ", numel.status().message()));
    }
    const uint64_t bytes = static_cast<uint64_t>(*numel) * DTypeSize(t.dtype);
    if (static_cast<uint64_t>(*numel) > kMaxTensorBytes / DTypeSize(t.dtype) || offset + bytes > kMaxTensorBytes) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", t.name, "': the file would pass ", kMaxTensorBytes,
                                                     " bytes"));
    }
    t.begin = offset;
    t.end = offset + bytes;
    offset = t.end;
    header[t.name] = {{"dtype", DTypeName(t.dtype)}, {"shape", t.shape}, {"data_offsets", {t.begin, t.end}}};
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  SafetensorsLayout layout;
  layout.prefix.resize(8);
  for (int i = 0; i < 8; ++i) layout.prefix[i] = static_cast<char>(uint64_t{text.size()} >> (8 * i));
  layout.prefix += text;
  layout.entries = std::move(tensors);
  return layout;
}

std::string SafetensorsIndexJson(const std::map<std::string, std::string>& weight_map, uint64_t total_size) {
  json index = {{"metadata", {{"total_size", total_size}}}, {"weight_map", weight_map}};
  return index.dump(2) + "\n";
}

absl::Status WriteSafetensorsFile(const std::string& path, std::span<const NamedTensor> tensors,
                                  const std::map<std::string, std::string>& metadata) {
  std::vector<SafetensorsEntry> entries;
  std::map<std::string, const Tensor*> by_name;
  for (const NamedTensor& t : tensors) {
    entries.push_back({t.name, t.tensor.dtype(), t.tensor.shape()});
    by_name[t.name] = &t.tensor;
  }
  absl::StatusOr<SafetensorsLayout> layout = LayoutSafetensorsFile(std::move(entries), metadata);
  if (!layout.ok()) return layout.status();
  // Streamed (O_DIRECT, a writer thread): the resume state rewrites the calibration activations
  // after every layer, gigabytes for a real model.
  return AtomicWriteFileStreamed(path, [&](StreamingFileWriter& w) {
    const std::string& prefix = layout->prefix;
    absl::Status s = w.Append({reinterpret_cast<const uint8_t*>(prefix.data()), prefix.size()});
    for (const SafetensorsEntry& e : layout->entries) {
      if (s.ok()) s = w.Append(by_name[e.name]->bytes());
    }
    return s;
  });
}

absl::StatusOr<std::vector<std::string>> WriteSafetensorsModel(const std::string& dir, std::vector<NamedTensor> tensors,
                                                               uint64_t max_shard_bytes) {
  namespace fs = std::filesystem;
  std::sort(tensors.begin(), tensors.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
  std::vector<std::vector<NamedTensor>> shards(1);
  uint64_t in_shard = 0, total = 0;
  for (NamedTensor& t : tensors) {
    uint64_t n = t.tensor.nbytes();
    if (!shards.back().empty() && in_shard + n > max_shard_bytes) {
      shards.emplace_back();
      in_shard = 0;
    }
    in_shard += n;
    total += n;
    shards.back().push_back(std::move(t));
  }
  std::vector<std::string> written;
  if (shards.size() == 1) {
    absl::Status s = WriteSafetensorsFile((fs::path(dir) / "model.safetensors").string(), shards[0]);
    if (!s.ok()) return s;
    written.push_back("model.safetensors");
    return written;
  }
  std::map<std::string, std::string> weight_map;
  for (size_t i = 0; i < shards.size(); ++i) {
    std::string name = absl::StrFormat("model-%05d-of-%05d.safetensors", i + 1, shards.size());
    absl::Status s = WriteSafetensorsFile((fs::path(dir) / name).string(), shards[i]);
    if (!s.ok()) return s;
    for (const NamedTensor& t : shards[i]) weight_map[t.name] = name;
    written.push_back(name);
  }
  absl::Status s = AtomicWriteFile((fs::path(dir) / "model.safetensors.index.json").string(),
                                   SafetensorsIndexJson(weight_map, total));
  if (!s.ok()) return s;
  written.push_back("model.safetensors.index.json");
  return written;
}

}  // namespace lowbit
