// Process-wide settings for the programs that speak gRPC (both services and the CLI). Call
// SetUpProcess once at the start of main, before any thread starts.
#ifndef LOWBIT_RPC_PROCESS_H_
#define LOWBIT_RPC_PROCESS_H_

namespace lowbit::rpc {

// - Keeps freed heap memory in the process for reuse (glibc mallopt: a trim threshold of
//   256 MiB, and a fixed mmap threshold of 32 MiB, glibc's maximum). gRPC allocates a buffer for
//   each socket read and frees it once the message is consumed; with glibc's defaults those pages
//   went back to the kernel and came back as fresh zeroed pages — page faults that took ~20% of a
//   receiving server's CPU in UploadModel.
// - Turns off absl::Mutex's deadlock detection. Debian builds Abseil without NDEBUG, so every
//   lock of every absl::Mutex (gRPC's core locks are absl::Mutex) also took one process-wide
//   spin lock to update a lock graph (GraphCycles, 1.1% of the runtime's samples in a Gemm
//   loop). Release builds of Abseil leave it off.
void SetUpProcess();

}  // namespace lowbit::rpc

#endif  // LOWBIT_RPC_PROCESS_H_
