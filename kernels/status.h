// A small status type for kernels/. kernels/ builds on the GPU machine with CMake + CUDA alone
// (no Abseil there), so it cannot use absl::Status; ToAbslStatus() in kernels/absl_status.h
// converts for callers that live in the Abseil world (runtime, calibrator).
#ifndef LOWBIT_KERNELS_STATUS_H_
#define LOWBIT_KERNELS_STATUS_H_

#include <string>
#include <utility>

namespace lowbit::kernels {

enum class StatusCode { kOk = 0, kInvalidArgument, kUnimplemented, kUnavailable, kInternal, kFailedPrecondition };

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}
  static Status Ok() { return {}; }
  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  std::string ToString() const;

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

inline Status InvalidArgument(std::string m) { return {StatusCode::kInvalidArgument, std::move(m)}; }
inline Status Unimplemented(std::string m) { return {StatusCode::kUnimplemented, std::move(m)}; }
inline Status Unavailable(std::string m) { return {StatusCode::kUnavailable, std::move(m)}; }
inline Status Internal(std::string m) { return {StatusCode::kInternal, std::move(m)}; }
inline Status FailedPrecondition(std::string m) { return {StatusCode::kFailedPrecondition, std::move(m)}; }

#define LOWBIT_KRETURN_IF_ERROR(expr)            \
  do {                                           \
    ::lowbit::kernels::Status _st = (expr);      \
    if (!_st.ok()) return _st;                   \
  } while (0)

}  // namespace lowbit::kernels

#endif  // LOWBIT_KERNELS_STATUS_H_
