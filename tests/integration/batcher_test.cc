// The dynamic batcher on its own, with a fake executor (no kernels, no gRPC): which requests share
// a GEMM, that each gets its own rows back, and how waiting requests leave early.
#include "runtime/batcher.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

namespace lowbit::runtime {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// Records every GEMM's request count; y = 2·x + 1 row by row, so a request given another's rows
// shows. Optionally holds each GEMM until released, and fails the GEMM of a given index.
class FakeExecutor {
 public:
  Batcher::Executor Bind() {
    return [this](const PreparedLinear&, DType, DType, const std::vector<const Tensor*>& xs, std::vector<Tensor>* ys,
                  ExecutionTiming* timing) -> absl::Status {
      bool fail = false;
      {
        std::unique_lock<std::mutex> lock(mu_);
        fail = static_cast<int>(batches_.size()) == fail_index_;
        batches_.push_back(static_cast<int>(xs.size()));
        started_.notify_all();
        released_.wait(lock, [&] { return !hold_; });
      }
      if (fail) return absl::InternalError("planted executor failure");
      for (const Tensor* x : xs) {
        std::vector<float> v = x->ToFloats();
        for (float& f : v) f = 2 * f + 1;
        ys->push_back(Tensor::FromFloats(v, x->shape(), DType::kF32));
      }
      timing->infer_ns = 1000;  // 1 µs
      return absl::OkStatus();
    };
  }
  void Hold() {
    std::lock_guard<std::mutex> lock(mu_);
    hold_ = true;
  }
  void Release() {
    std::lock_guard<std::mutex> lock(mu_);
    hold_ = false;
    released_.notify_all();
  }
  void WaitForGemms(size_t n) {
    std::unique_lock<std::mutex> lock(mu_);
    started_.wait(lock, [&] { return batches_.size() >= n; });
  }
  std::vector<int> batches() {
    std::lock_guard<std::mutex> lock(mu_);
    return batches_;
  }
  void FailGemm(int index) {
    std::lock_guard<std::mutex> lock(mu_);
    fail_index_ = index;
  }

 private:
  std::mutex mu_;
  std::condition_variable started_, released_;
  bool hold_ = false;
  int fail_index_ = -1;
  std::vector<int> batches_;
};

BatchItem Item(const std::shared_ptr<const PreparedLinear>& layer, int rows, float value) {
  std::vector<float> v(rows * 4);
  for (size_t i = 0; i < v.size(); ++i) v[i] = value + static_cast<float>(i);
  return BatchItem{layer, Tensor::FromFloats(v, {rows, 4}, DType::kF32), DType::kF32};
}

// Checks a result against y = 2·x + 1 of the request made by Item(…, rows, value).
void ExpectOwnRows(const absl::StatusOr<GemmResult>& r, int rows, float value) {
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->y.dim(0), rows);
  std::vector<float> y = r->y.ToFloats();
  for (size_t i = 0; i < y.size(); ++i) ASSERT_EQ(y[i], 2 * (value + i) + 1) << "element " << i;
}

TEST(BatcherTest, RequestsQueuedDuringAGemmRunAsTheNextBatchAndGetTheirOwnRows) {
  FakeExecutor fake;
  Batcher batcher(BatcherOptions{}, fake.Bind(), nullptr);  // delay 0
  auto layer = std::make_shared<PreparedLinear>();
  fake.Hold();
  absl::StatusOr<GemmResult> first_result;
  const auto start = Clock::now();
  std::thread first([&] { first_result = batcher.Run(Item(layer, 1, 0), CallControl{}); });
  fake.WaitForGemms(1);  // the first request's GEMM runs (held)
  const uint64_t first_waited_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - start).count();
  constexpr int kQueued = 6;
  std::vector<std::thread> queued;
  std::atomic<int> batch_requests{0};
  std::atomic<uint64_t> min_queue_ns{UINT64_MAX};
  for (int i = 0; i < kQueued; ++i) {
    queued.emplace_back([&, i] {
      const auto called = Clock::now();
      auto r = batcher.Run(Item(layer, 1 + i % 3, 100.f * (i + 1)), CallControl{});
      const auto took = Clock::now() - called;
      ExpectOwnRows(r, 1 + i % 3, 100.f * (i + 1));
      if (!r.ok()) return;
      EXPECT_LE(r->queue_ns, static_cast<uint64_t>(std::chrono::nanoseconds(took).count()));
      batch_requests = r->batch_requests;
      EXPECT_EQ(r->timing.infer_ns, 1000u);  // the executor's phases, handed to every request
      EXPECT_EQ(r->kernel_us(), 1.0);
      uint64_t seen = min_queue_ns.load();
      while (r->queue_ns < seen && !min_queue_ns.compare_exchange_weak(seen, r->queue_ns)) {
      }
    });
  }
  std::this_thread::sleep_for(milliseconds(200));  // all six queue behind the running GEMM
  fake.Release();
  first.join();
  for (auto& t : queued) t.join();
  ExpectOwnRows(first_result, 1, 0);
  EXPECT_EQ(fake.batches(), (std::vector<int>{1, kQueued}));
  EXPECT_EQ(batch_requests.load(), kQueued);
  // Queue time: the queued ones waited out most of the held GEMM's 200 ms (each at most its own
  // call's time, above); the first one ran at once, within the time its GEMM took to start.
  EXPECT_GE(min_queue_ns.load(), 100'000'000u);
  EXPECT_LE(first_result->queue_ns, first_waited_ns);
}

TEST(BatcherTest, AFullBatchDoesNotWaitOutTheDelay) {
  FakeExecutor fake;
  BatcherOptions options;
  options.max_queue_delay_us = 20'000'000;  // 20 s
  options.max_batch_rows = 4;
  Batcher batcher(options, fake.Bind(), nullptr);
  auto layer = std::make_shared<PreparedLinear>();
  const auto t0 = Clock::now();
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] { ExpectOwnRows(batcher.Run(Item(layer, 1, 10.f * i), CallControl{}), 1, 10.f * i); });
  }
  for (auto& t : threads) t.join();
  EXPECT_LT(Clock::now() - t0, std::chrono::seconds(5));
  EXPECT_EQ(fake.batches(), (std::vector<int>{4}));
}

TEST(BatcherTest, AWithdrawnLeaderHandsTheBatchToTheNextRequest) {
  FakeExecutor fake;
  BatcherOptions options;
  options.max_queue_delay_us = 300'000;  // 0.3 s window
  Batcher batcher(options, fake.Bind(), nullptr);
  auto layer = std::make_shared<PreparedLinear>();
  CallControl short_deadline;
  short_deadline.deadline = std::chrono::system_clock::now() + milliseconds(50);
  absl::StatusOr<GemmResult> leader_result, follower_result;
  std::thread leader([&] { leader_result = batcher.Run(Item(layer, 1, 1), short_deadline); });
  std::this_thread::sleep_for(milliseconds(10));
  std::thread follower([&] { follower_result = batcher.Run(Item(layer, 2, 5), CallControl{}); });
  leader.join();
  EXPECT_EQ(leader_result.status().code(), absl::StatusCode::kDeadlineExceeded);
  follower.join();
  ExpectOwnRows(follower_result, 2, 5);
  EXPECT_EQ(follower_result->batch_requests, 1);
  EXPECT_EQ(fake.batches(), (std::vector<int>{1}));
}

// Under load a request can wait for the execution slot past its deadline (a leader, or any
// request with batching off, waits on the slot, not on its deadline): it is shed when the slot
// comes, not computed, and the requests behind it still run.
TEST(BatcherTest, ARequestPastItsDeadlineWhenTheSlotComesIsShedNotComputed) {
  for (bool enabled : {false, true}) {
    SCOPED_TRACE(enabled ? "batching on" : "batching off");
    FakeExecutor fake;
    BatcherOptions options;
    options.enabled = enabled;
    Batcher batcher(options, fake.Bind(), nullptr);
    auto layer = std::make_shared<PreparedLinear>();
    fake.Hold();
    std::thread first([&] { ExpectOwnRows(batcher.Run(Item(layer, 1, 0), CallControl{}), 1, 0); });
    fake.WaitForGemms(1);
    CallControl short_deadline;
    short_deadline.deadline = std::chrono::system_clock::now() + milliseconds(50);
    absl::StatusOr<GemmResult> late, patient;
    std::thread late_thread([&] { late = batcher.Run(Item(layer, 1, 1), short_deadline); });
    std::this_thread::sleep_for(milliseconds(20));  // the late one is first in line
    std::thread patient_thread([&] { patient = batcher.Run(Item(layer, 2, 9), CallControl{}); });
    std::this_thread::sleep_for(milliseconds(150));  // past the late one's deadline
    fake.Release();
    first.join();
    late_thread.join();
    patient_thread.join();
    EXPECT_EQ(late.status().code(), absl::StatusCode::kDeadlineExceeded);
    ExpectOwnRows(patient, 2, 9);
    EXPECT_EQ(patient->batch_requests, 1);
    EXPECT_EQ(fake.batches(), (std::vector<int>{1, 1})) << "the late request was computed";
  }
}

TEST(BatcherTest, AFailedGemmFailsEveryRequestInItAndTheNextBatchRuns) {
  FakeExecutor fake;
  Batcher batcher(BatcherOptions{}, fake.Bind(), nullptr);
  auto layer = std::make_shared<PreparedLinear>();
  fake.FailGemm(1);
  fake.Hold();
  std::thread first([&] { EXPECT_TRUE(batcher.Run(Item(layer, 1, 0), CallControl{}).ok()); });
  fake.WaitForGemms(1);
  std::vector<std::thread> queued;
  std::atomic<int> failed{0};
  for (int i = 0; i < 3; ++i) {
    queued.emplace_back([&] {
      auto r = batcher.Run(Item(layer, 1, 0), CallControl{});
      if (r.status().code() == absl::StatusCode::kInternal) ++failed;
    });
  }
  std::this_thread::sleep_for(milliseconds(200));
  fake.Release();
  first.join();
  for (auto& t : queued) t.join();
  EXPECT_EQ(failed.load(), 3);
  EXPECT_EQ(fake.batches(), (std::vector<int>{1, 3}));
  ExpectOwnRows(batcher.Run(Item(layer, 2, 7), CallControl{}), 2, 7);
}

TEST(BatcherTest, ACancelledQueuedRequestLeavesWithinThePollInterval) {
  FakeExecutor fake;
  BatcherOptions options;
  options.max_queue_delay_us = 5'000'000;  // the request would wait 5 s for company
  options.cancel_poll_us = 10'000;
  options.max_batch_rows = 2;  // a 1-row request waits; a 2-row one fills a batch and goes
  Batcher batcher(options, fake.Bind(), nullptr);
  auto layer = std::make_shared<PreparedLinear>();
  std::atomic<bool> cancelled{false};
  CallControl control;
  control.cancelled = [&] { return cancelled.load(); };
  absl::StatusOr<GemmResult> result;
  const auto t0 = Clock::now();
  std::thread waiter([&] { result = batcher.Run(Item(layer, 1, 0), control); });
  std::this_thread::sleep_for(milliseconds(50));
  cancelled = true;
  waiter.join();
  EXPECT_EQ(result.status().code(), absl::StatusCode::kCancelled);
  EXPECT_LT(Clock::now() - t0, std::chrono::seconds(2));
  EXPECT_TRUE(fake.batches().empty()) << "a cancelled request ran";
  // The queue is empty again: the next request leads and runs alone.
  auto next = batcher.Run(Item(layer, 2, 4), CallControl{});
  ExpectOwnRows(next, 2, 4);
  EXPECT_EQ(next->batch_requests, 1);
}

// Asking whether a call was cancelled costs ≈ 30 µs under gRPC's sync API: a request that runs
// at once never asks.
TEST(BatcherTest, ARequestThatRunsAtOnceNeverPollsCancellation) {
  for (bool enabled : {true, false}) {
    FakeExecutor fake;
    BatcherOptions options;
    options.enabled = enabled;
    Batcher batcher(options, fake.Bind(), nullptr);
    auto layer = std::make_shared<PreparedLinear>();
    std::atomic<int> polls{0};
    CallControl control;
    control.cancelled = [&] {
      ++polls;
      return false;
    };
    for (int i = 0; i < 20; ++i) ExpectOwnRows(batcher.Run(Item(layer, 1, i), control), 1, i);
    EXPECT_EQ(polls.load(), 0) << "batching " << enabled;
  }
}

// Many threads, requests cancelled or timing out at random while queued, the cancellation asked
// all the time (without the queue lock): every call returns, with its own rows or with
// CANCELLED / DEADLINE_EXCEEDED, and nothing stays queued.
TEST(BatcherTest, RandomCancellationsAndDeadlinesUnderLoad) {
  FakeExecutor fake;
  BatcherOptions options;
  options.max_queue_delay_us = 300;
  options.max_batch_rows = 8;
  options.cancel_poll_us = 1;
  Batcher batcher(options, fake.Bind(), nullptr);
  auto layer = std::make_shared<PreparedLinear>();
  constexpr int kThreads = 16, kCalls = 150;
  std::atomic<int> finished{0}, ok{0}, ended_early{0}, wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(t);
      for (int i = 0; i < kCalls; ++i) {
        const int rows = 1 + static_cast<int>(rng() % 3);
        const float value = static_cast<float>(t * 1000 + i);
        auto flag = std::make_shared<std::atomic<bool>>(false);
        CallControl control;
        control.cancelled = [flag] { return flag->load(); };
        const int kind = static_cast<int>(rng() % 4);
        if (kind == 1) control.deadline = std::chrono::system_clock::now() + std::chrono::microseconds(rng() % 400);
        std::thread canceller;
        if (kind == 2) {
          const int after = static_cast<int>(rng() % 400);
          canceller = std::thread([flag, after] {
            std::this_thread::sleep_for(std::chrono::microseconds(after));
            *flag = true;
          });
        }
        auto r = batcher.Run(Item(layer, rows, value), control);
        if (canceller.joinable()) canceller.join();
        if (r.ok()) {
          ++ok;
          std::vector<float> y = r->y.ToFloats();
          for (size_t j = 0; j < y.size(); ++j) {
            if (y[j] != 2 * (value + j) + 1 || r->y.dim(0) != rows) {
              ++wrong;
              break;
            }
          }
        } else if (r.status().code() == absl::StatusCode::kCancelled ||
                   r.status().code() == absl::StatusCode::kDeadlineExceeded) {
          ++ended_early;
        } else {
          ++wrong;
        }
        ++finished;
      }
    });
  }
  const auto t0 = Clock::now();
  while (finished.load() < kThreads * kCalls && Clock::now() - t0 < std::chrono::seconds(120)) {
    std::this_thread::sleep_for(milliseconds(10));
  }
  if (finished.load() < kThreads * kCalls) {
    ADD_FAILURE() << "calls hung: " << finished.load() << " of " << kThreads * kCalls << " returned";
    std::fflush(nullptr);
    std::_Exit(1);  // the hung threads cannot be joined
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_GT(ok.load(), kThreads * kCalls / 4);
  EXPECT_GT(ended_early.load(), 0);
  // Nothing stayed queued: a full batch's worth of rows runs alone (a stale queued request would
  // lead the queue and never run).
  auto last = batcher.Run(Item(layer, 8, 1), CallControl{});
  ExpectOwnRows(last, 8, 1);
  EXPECT_EQ(last->batch_requests, 1);
  std::printf("  %d ran, %d ended early, %zu GEMMs\n", ok.load(), ended_early.load(), fake.batches().size());
}

TEST(BatcherTest, DifferentLayersNeverShareAGemm) {
  FakeExecutor fake;
  BatcherOptions options;
  options.max_queue_delay_us = 100'000;
  Batcher batcher(options, fake.Bind(), nullptr);
  auto a = std::make_shared<PreparedLinear>();
  auto b = std::make_shared<PreparedLinear>();
  std::vector<std::thread> threads;
  for (int i = 0; i < 6; ++i) {
    threads.emplace_back([&, i] {
      ExpectOwnRows(batcher.Run(Item(i % 2 ? a : b, 1, 3.f * i), CallControl{}), 1, 3.f * i);
    });
  }
  for (auto& t : threads) t.join();
  int total = 0;
  for (int n : fake.batches()) total += n;
  EXPECT_EQ(total, 6);
  EXPECT_GE(fake.batches().size(), 2u);
}

}  // namespace
}  // namespace lowbit::runtime
