// A bidirectional stream of independent requests (lowbit.v1 GemmStream, KServe ModelStreamInfer)
// served concurrently: the handler's thread reads and parses each message, up to `max_inflight`
// workers run the requests at once (so they batch with each other and with other clients), and
// each response is written as soon as it is ready (responses may come out of order; they carry
// the request's id).
//
// The stream is read raw and parsed here, not by a typed stream: the sync API's typed Read()
// reports a message that does not parse as the end of the stream, and the requests after it
// would vanish silently. The requests do not each ask the call whether it was cancelled (a
// completion-queue pluck under the sync API, with at most 6 pluckers per queue): the reader finds
// out when its Read fails, a writer when its Write does, and the requests waiting in the batcher
// see it through their CallControl.
#ifndef LOWBIT_RUNTIME_SERVICE_CONCURRENT_STREAM_H_
#define LOWBIT_RUNTIME_SERVICE_CONCURRENT_STREAM_H_

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "grpcpp/server_context.h"
#include "rpc/raw_stream.h"
#include "rpc/wire.h"
#include "runtime/call_control.h"

namespace lowbit::runtime {

// How the stream ended: the client went (or its deadline passed), or a message did not parse
// (`malformed`: the requests before it were answered, nothing after it was read), or neither
// (the client half-closed and every request was answered).
struct StreamEnd {
  bool cancelled = false;
  absl::Status malformed;
};

// The error for message `index` (from 0) of stream method `method` that did not parse as a
// `type` (a protobuf full name): it names the message, and says what was answered.
inline absl::Status MalformedStreamMessage(const char* method, int64_t index, size_t bytes, const std::string& type) {
  const bool vowel = !type.empty() && std::string("aeiouAEIOU").find(type[0]) != std::string::npos;
  return absl::InvalidArgumentError(absl::StrCat(
      method, " request message ", index + 1, " (", bytes, " bytes) did not parse as ", vowel ? "an " : "a ", type,
      "; the stream stops there: the ", index, " requests before it were answered, nothing after it was read"));
}

// Reads `Request`s from the stream of method `method` ("GemmStream"); a message that does not
// parse stops it (MalformedStreamMessage). `handle(control, request, &response_bytes)`: runs one
// request and encodes its response (a failed request is reported inside its response); false
// when the response cannot be encoded, which ends the stream as a failed write does.
template <class Request>
StreamEnd ServeConcurrently(
    grpc::ServerContext* ctx, rpc::RawServerStream* stream, int max_inflight, const char* method,
    const std::function<bool(const CallControl& control, Request& request, grpc::ByteBuffer* response)>& handle) {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Request> queue;
  bool reading_done = false, write_failed = false;
  int idle = 0;
  std::atomic<bool> gone{false};
  CallControl control;
  control.cancelled = [&gone] { return gone.load(); };
  control.deadline = ctx->deadline();
  std::vector<std::thread> workers;
  auto work = [&] {
    std::unique_lock<std::mutex> lock(mu);
    while (true) {
      ++idle;
      cv.wait(lock, [&] { return !queue.empty() || reading_done; });
      --idle;
      if (queue.empty()) return;
      Request r = std::move(queue.front());
      queue.pop_front();
      cv.notify_all();  // room in the queue for the reader
      lock.unlock();
      grpc::ByteBuffer bytes;
      const bool encoded = handle(control, r, &bytes);
      lock.lock();
      if (!write_failed && (!encoded || !stream->Write(bytes))) {
        write_failed = true;
        gone = true;
      }
    }
  };
  const size_t max_workers = static_cast<size_t>(std::max(1, max_inflight));
  StreamEnd end;
  grpc::ByteBuffer raw;
  int64_t index = 0;
  while (stream->Read(&raw)) {
    Request req;
    if (!rpc::Decode(raw, &req).ok()) {
      end.malformed = MalformedStreamMessage(method, index, raw.Length(), Request::descriptor()->full_name());
      break;
    }
    ++index;
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return queue.size() < max_workers || write_failed; });
    if (write_failed) break;
    queue.push_back(std::move(req));
    if (idle == 0 && workers.size() < max_workers) workers.emplace_back(work);
    cv.notify_all();
  }
  // Read failed: the client half-closed, or went. (After a malformed message nothing was asked.)
  end.cancelled = end.malformed.ok() && ctx->IsCancelled();
  if (end.cancelled) gone = true;
  {
    std::lock_guard<std::mutex> lock(mu);
    reading_done = true;
    cv.notify_all();
  }
  for (std::thread& t : workers) t.join();  // the requests before a malformed one are answered
  return end;
}

}  // namespace lowbit::runtime

#endif  // LOWBIT_RUNTIME_SERVICE_CONCURRENT_STREAM_H_
