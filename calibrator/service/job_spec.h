// A lowbit.v1.JobSpec checked and turned into a CalibrationJob: the model resolved inside the
// model root (or an uploaded model), the recipe or preset scheme parsed, the tokens (an uploaded
// dataset or inline) loaded and split with the spec's options and their defaults
// (num_calibration_samples 0 → 512, max_seq_length 0 → 2048, heldout_fraction < 0 → 0.1,
// seed 0 → 42, algorithm "" → gptq).
#ifndef LOWBIT_CALIBRATOR_SERVICE_JOB_SPEC_H_
#define LOWBIT_CALIBRATOR_SERVICE_JOB_SPEC_H_

#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "calibrator/dataset.h"
#include "calibrator/pipeline.h"
#include "calibrator/service/upload_store.h"
#include "lowbit/v1/calibrator.pb.h"

namespace lowbit::calibrator {

struct ServicePaths {
  std::string model_root;
  std::string output_root;
  const UploadStore* uploads = nullptr;
};

// The uploaded model a spec names ("uploads/<name>" → name), or nullopt for a model under the
// model root.
std::optional<std::string> UploadedModelName(const v1::JobSpec& spec);

// The model directory a spec names. InvalidArgument (path escapes the root, not a model
// directory), NotFound.
absl::StatusOr<std::string> ResolveModel(const v1::JobSpec& spec, const ServicePaths& paths);

// Everything CreateJob checks before queuing: model, recipe / scheme, data, output name.
// Checks that need the model's weights or the tokens' values (targets that match nothing,
// token ids ≥ vocab) happen when the job runs and fail it.
absl::Status ValidateJobSpec(const v1::JobSpec& spec, const ServicePaths& paths);

// The checkpoint directory name under the output root: output_name, or the job id.
std::string OutputName(const v1::Job& job);

DatasetOptions DatasetOptionsFromSpec(const v1::JobSpec& spec);

// The job to run, writing into `out_dir`.
absl::StatusOr<CalibrationJob> BuildJobFromSpec(const v1::JobSpec& spec, const std::string& out_dir,
                                                const ServicePaths& paths);

}  // namespace lowbit::calibrator

#endif  // LOWBIT_CALIBRATOR_SERVICE_JOB_SPEC_H_
