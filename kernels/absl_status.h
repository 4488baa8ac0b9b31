// Conversion of kernels::Status to absl::Status, for code that builds with Abseil.
#ifndef LOWBIT_KERNELS_ABSL_STATUS_H_
#define LOWBIT_KERNELS_ABSL_STATUS_H_

#include "absl/status/status.h"
#include "kernels/status.h"

namespace lowbit::kernels {

inline absl::Status ToAbslStatus(const Status& s) {
  switch (s.code()) {
    case StatusCode::kOk: return absl::OkStatus();
    case StatusCode::kInvalidArgument: return absl::InvalidArgumentError(s.message());
    case StatusCode::kUnimplemented: return absl::UnimplementedError(s.message());
    case StatusCode::kUnavailable: return absl::UnavailableError(s.message());
    case StatusCode::kInternal: return absl::InternalError(s.message());
    case StatusCode::kFailedPrecondition: return absl::FailedPreconditionError(s.message());
  }
  return absl::UnknownError(s.message());
}

}  // namespace lowbit::kernels

#endif  // LOWBIT_KERNELS_ABSL_STATUS_H_
