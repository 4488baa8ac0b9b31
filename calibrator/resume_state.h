// Per-layer resume state of a calibration run (PipelineOptions::resume_dir), so a job
// interrupted by a crash continues after its last finished decoder layer and still writes the
// checkpoint an uninterrupted run writes. Layout of the directory:
//   smoothquant.safetensors   SmoothQuant's scales for every layer ("scales.<i>", F32) + the
//                             report's mapping summary; written once after its pass
//   layer-<i>.safetensors     the tensors decoder layer i produced + (metadata) the source
//                             tensors they replace, module results, KV scales, warnings
//   state.safetensors         hidden states after the last finished layer ("calib", "ref",
//                             "quant", F32) + layers_done
// Every file is written atomically and carries the job's fingerprint (model dir and its files'
// sizes, inodes, modification and change times, recipe, tokens, chunking); state.safetensors is
// written after the layer's file, so it never points at a layer that is not on disk. State with
// another fingerprint, or anything unreadable, is ignored (the run starts over).
#ifndef LOWBIT_CALIBRATOR_RESUME_STATE_H_
#define LOWBIT_CALIBRATOR_RESUME_STATE_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "calibrator/pipeline.h"
#include "common/safetensors.h"
#include "nlohmann/json.hpp"

namespace lowbit {

struct LayerState {
  int64_t layer = 0;
  std::vector<NamedTensor> tensors;
  std::vector<std::string> replaced;
  std::vector<ModuleResult> modules;
  nlohmann::json kv_scales = nlohmann::json::array();
  std::vector<std::string> warnings;
};

struct StreamState {
  int64_t layers_done = 0;
  std::vector<float> calib, ref, quant;  // ref / quant empty without held-out samples
};

struct SmoothingState {
  std::vector<std::vector<float>> scales;  // per layer
  nlohmann::json summary = nlohmann::json::array();
};

// A stable digest of what determines the run's result: the job (with the model's files as they
// are on disk, so a model replaced between a failure and its retry starts over), the options that
// change numbers,
// and the compute's NumericsId (a resume on another BLAS build, CPU kernel or thread count starts
// over, so the output is still what an uninterrupted run there writes).
std::string JobFingerprint(const CalibrationJob& job, const PipelineOptions& options, const std::string& numerics_id);

class ResumeState {
 public:
  ResumeState(std::string dir, std::string fingerprint) : dir_(std::move(dir)), fingerprint_(std::move(fingerprint)) {}

  absl::Status SaveSmoothing(const SmoothingState& s) const;
  std::optional<SmoothingState> LoadSmoothing(int64_t num_layers) const;

  // The layer's file, then the hidden streams with layers_done = layer.layer + 1 (ref / quant
  // may be null).
  absl::Status SaveLayer(const LayerState& layer, const std::vector<float>& calib, const std::vector<float>* ref,
                         const std::vector<float>* quant) const;
  // The streams and every finished layer, or nullopt when there is nothing usable.
  struct Loaded {
    StreamState streams;
    std::vector<LayerState> layers;
  };
  std::optional<Loaded> Load() const;

 private:
  std::string dir_, fingerprint_;
};

}  // namespace lowbit

#endif  // LOWBIT_CALIBRATOR_RESUME_STATE_H_
