#include "calibrator/resume_state.h"

#include <sys/stat.h>

#include <algorithm>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace lowbit {

namespace {

// FNV-1a, 64-bit.
class Digest {
 public:
  void Add(const void* data, size_t n) {
    const auto* p = static_cast<const uint8_t*>(data);
    for (size_t i = 0; i < n; ++i) h_ = (h_ ^ p[i]) * 0x100000001b3ull;
  }
  void Add(const std::string& s) {
    uint64_t n = s.size();
    Add(&n, sizeof n);
    Add(s.data(), s.size());
  }
  void Add(const std::vector<std::vector<int32_t>>& seqs) {
    uint64_t n = seqs.size();
    Add(&n, sizeof n);
    for (const auto& s : seqs) {
      uint64_t m = s.size();
      Add(&m, sizeof m);
      Add(s.data(), s.size() * sizeof(int32_t));
    }
  }
  uint64_t value() const { return h_; }

 private:
  uint64_t h_ = 0xcbf29ce484222325ull;
};

Tensor FloatView(const std::vector<float>& v) {
  return Tensor::View(DType::kF32, {static_cast<int64_t>(v.size())}, reinterpret_cast<const uint8_t*>(v.data()),
                      nullptr);
}

std::string LayerPath(const std::string& dir, int64_t layer) {
  return absl::StrFormat("%s/layer-%05d.safetensors", dir, layer);
}

nlohmann::json ModulesToJson(const std::vector<ModuleResult>& modules) {
  nlohmann::json out = nlohmann::json::array();
  for (const ModuleResult& m : modules) {
    out.push_back({{"module", m.module}, {"group", m.group}, {"algorithm", m.algorithm}, {"loss", m.loss},
                   {"weight_relative_error", m.weight_relative_error}, {"seconds", m.seconds},
                   {"samples", m.samples}, {"fell_back_to_rtn", m.fell_back_to_rtn}, {"warning", m.warning}});
  }
  return out;
}

std::vector<ModuleResult> ModulesFromJson(const nlohmann::json& j) {
  std::vector<ModuleResult> out;
  for (const auto& m : j) {
    ModuleResult r;
    r.module = m.at("module");
    r.group = m.at("group");
    r.algorithm = m.at("algorithm");
    r.loss = m.at("loss");
    r.weight_relative_error = m.at("weight_relative_error");
    r.seconds = m.at("seconds");
    r.samples = m.at("samples");
    r.fell_back_to_rtn = m.at("fell_back_to_rtn");
    r.warning = m.at("warning");
    out.push_back(std::move(r));
  }
  return out;
}

// The file when it exists, is readable and carries our fingerprint.
std::unique_ptr<SafetensorsFile> OpenOurs(const std::string& path, const std::string& fingerprint) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return nullptr;
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> f = SafetensorsFile::Open(path);
  if (!f.ok()) return nullptr;
  auto it = (*f)->header().metadata.find("lowbit_resume");
  if (it == (*f)->header().metadata.end() || it->second != fingerprint) return nullptr;
  return *std::move(f);
}

std::string Meta(const SafetensorsFile& f, const std::string& key) {
  auto it = f.header().metadata.find(key);
  return it == f.header().metadata.end() ? std::string() : it->second;
}

std::optional<std::vector<float>> Floats(const SafetensorsFile& f, const std::string& name) {
  if (!f.Has(name)) return std::vector<float>();
  absl::StatusOr<Tensor> t = f.Get(name);
  if (!t.ok() || t->dtype() != DType::kF32) return std::nullopt;
  return t->ToFloats();
}

// The model directory's weights and configuration as they are on disk: each *.safetensors and
// *.json file's name, size, inode, and modification and change times (sorted by name). Replacing
// or editing a file changes it, even when the copy keeps the old mtime (`cp -p`, `rsync -a`: the
// inode or ctime differ); reading them does not.
std::string ModelFilesIdentity(const std::string& model_dir) {
  std::vector<std::string> entries;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(model_dir, ec)) {
    const std::filesystem::path& p = entry.path();
    if (p.extension() != ".safetensors" && p.extension() != ".json") continue;
    struct stat st {};
    if (::stat(p.c_str(), &st) != 0) continue;
    entries.push_back(absl::StrCat(p.filename().string(), " ", st.st_size, " ", st.st_ino, " ", st.st_mtim.tv_sec, ".",
                                   st.st_mtim.tv_nsec, " ", st.st_ctim.tv_sec, ".", st.st_ctim.tv_nsec));
  }
  std::sort(entries.begin(), entries.end());
  return absl::StrJoin(entries, "\n");
}

}  // namespace

std::string JobFingerprint(const CalibrationJob& job, const PipelineOptions& options, const std::string& numerics_id) {
  Digest d;
  d.Add(std::string("lowbit-resume-v2"));
  d.Add(job.model_dir);
  d.Add(ModelFilesIdentity(job.model_dir));
  d.Add(job.recipe_yaml);
  d.Add(job.calibration);
  d.Add(job.heldout);
  d.Add(&options.max_chunk_tokens, sizeof options.max_chunk_tokens);
  d.Add(numerics_id);
  return absl::StrFormat("%016x", d.value());
}

absl::Status ResumeState::SaveSmoothing(const SmoothingState& s) const {
  std::error_code ec;
  std::filesystem::create_directories(dir_, ec);
  std::vector<NamedTensor> tensors;
  for (size_t i = 0; i < s.scales.size(); ++i) tensors.push_back({absl::StrCat("scales.", i), FloatView(s.scales[i])});
  return WriteSafetensorsFile(dir_ + "/smoothquant.safetensors", tensors,
                              {{"lowbit_resume", fingerprint_}, {"summary", s.summary.dump()}});
}

std::optional<SmoothingState> ResumeState::LoadSmoothing(int64_t num_layers) const {
  std::unique_ptr<SafetensorsFile> f = OpenOurs(dir_ + "/smoothquant.safetensors", fingerprint_);
  if (!f) return std::nullopt;
  SmoothingState s;
  for (int64_t i = 0; i < num_layers; ++i) {
    std::string name = absl::StrCat("scales.", i);
    if (!f->Has(name)) return std::nullopt;
    std::optional<std::vector<float>> v = Floats(*f, name);
    if (!v) return std::nullopt;
    s.scales.push_back(*std::move(v));
  }
  s.summary = nlohmann::json::parse(Meta(*f, "summary"), nullptr, false);
  if (s.summary.is_discarded()) return std::nullopt;
  return s;
}

absl::Status ResumeState::SaveLayer(const LayerState& layer, const std::vector<float>& calib,
                                    const std::vector<float>* ref, const std::vector<float>* quant) const {
  std::error_code ec;
  std::filesystem::create_directories(dir_, ec);
  nlohmann::json warnings = layer.warnings, replaced = layer.replaced, order = nlohmann::json::array();
  for (const NamedTensor& t : layer.tensors) order.push_back(t.name);
  std::map<std::string, std::string> meta = {{"lowbit_resume", fingerprint_},
                                             {"layer", std::to_string(layer.layer)},
                                             {"replaced", replaced.dump()},
                                             {"modules", ModulesToJson(layer.modules).dump()},
                                             {"kv_scales", layer.kv_scales.dump()},
                                             {"warnings", warnings.dump()},
                                             {"order", order.dump()}};
  if (absl::Status s = WriteSafetensorsFile(LayerPath(dir_, layer.layer), layer.tensors, meta); !s.ok()) return s;
  std::vector<NamedTensor> hidden = {{"calib", FloatView(calib)}};
  if (ref != nullptr) hidden.push_back({"ref", FloatView(*ref)});
  if (quant != nullptr) hidden.push_back({"quant", FloatView(*quant)});
  return WriteSafetensorsFile(dir_ + "/state.safetensors", hidden,
                              {{"lowbit_resume", fingerprint_}, {"layers_done", std::to_string(layer.layer + 1)}});
}

std::optional<ResumeState::Loaded> ResumeState::Load() const {
  std::unique_ptr<SafetensorsFile> state = OpenOurs(dir_ + "/state.safetensors", fingerprint_);
  if (!state) return std::nullopt;
  Loaded out;
  try {
    out.streams.layers_done = std::stoll(Meta(*state, "layers_done"));
    for (int64_t i = 0; i < out.streams.layers_done; ++i) {
      std::unique_ptr<SafetensorsFile> f = OpenOurs(LayerPath(dir_, i), fingerprint_);
      if (!f || Meta(*f, "layer") != std::to_string(i)) return std::nullopt;
      LayerState l;
      l.layer = i;
      // Tensors in the order they were produced (the file lays them out by dtype size).
      std::vector<std::string> order = nlohmann::json::parse(Meta(*f, "order")).get<std::vector<std::string>>();
      for (const std::string& name : order) {
        absl::StatusOr<Tensor> t = f->Get(name);
        if (!t.ok()) return std::nullopt;
        l.tensors.push_back({name, t->Copy()});
      }
      l.replaced = nlohmann::json::parse(Meta(*f, "replaced")).get<std::vector<std::string>>();
      l.modules = ModulesFromJson(nlohmann::json::parse(Meta(*f, "modules")));
      l.kv_scales = nlohmann::json::parse(Meta(*f, "kv_scales"));
      l.warnings = nlohmann::json::parse(Meta(*f, "warnings")).get<std::vector<std::string>>();
      out.layers.push_back(std::move(l));
    }
  } catch (const std::exception&) {
    return std::nullopt;
  }
  std::optional<std::vector<float>> calib = Floats(*state, "calib"), ref = Floats(*state, "ref"),
                                    quant = Floats(*state, "quant");
  if (!calib || !ref || !quant || calib->empty()) return std::nullopt;
  out.streams.calib = *std::move(calib);
  out.streams.ref = *std::move(ref);
  out.streams.quant = *std::move(quant);
  return out;
}

}  // namespace lowbit
