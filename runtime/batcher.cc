#include "runtime/batcher.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace lowbit::runtime {

namespace {
absl::Status DeadlinePassed() {
  return absl::DeadlineExceededError("the call's deadline passed while the request waited to run");
}
}  // namespace

absl::Status CallControl::CheckDeadline() const {
  if (deadline != std::chrono::system_clock::time_point::max() && std::chrono::system_clock::now() >= deadline) {
    return DeadlinePassed();
  }
  return absl::OkStatus();
}

absl::Status CallControl::Check() const {
  if (absl::Status s = CheckDeadline(); !s.ok()) return s;
  if (cancelled && cancelled()) return absl::CancelledError("the call was cancelled by the client");
  return absl::OkStatus();
}

namespace {

using SteadyTime = std::chrono::steady_clock::time_point;

// The call's deadline on the steady clock (max = none).
SteadyTime SteadyDeadline(const CallControl& control) {
  if (control.deadline == std::chrono::system_clock::time_point::max()) return SteadyTime::max();
  const auto left = control.deadline - std::chrono::system_clock::now();
  return std::chrono::steady_clock::now() + std::chrono::duration_cast<std::chrono::steady_clock::duration>(left);
}

// Waits for a notification or `until` (max = no timeout).
void WaitUntil(std::condition_variable& cv, std::unique_lock<std::mutex>& lock, SteadyTime until) {
  if (until == SteadyTime::max()) {
    cv.wait(lock);
  } else {
    cv.wait_until(lock, until);
  }
}

}  // namespace

struct Batcher::Pending {
  BatchItem item;
  int64_t rows = 0;
  std::chrono::system_clock::time_point deadline;  // the call's (max = none)
  std::chrono::steady_clock::time_point arrived;
  enum State { kQueued, kTaken, kDone } state = kQueued;
  bool leader = false;
  bool abandoned = false;
  absl::Status status;
  GemmResult result;
  // Signalled (under mu_) when this request's state or leadership changes: one waiter per
  // request, so an arrival or a finished GEMM wakes only the threads it concerns (a shared
  // condition variable woke all 64 waiting handler threads on every arrival).
  std::condition_variable cv;
};

absl::StatusOr<GemmResult> Batcher::RunAlone(BatchItem item, const CallControl& control) {
  std::vector<const Tensor*> xs = {&item.x};
  std::vector<Tensor> ys;
  GemmResult r;
  const auto arrived = std::chrono::steady_clock::now();
  std::lock_guard<std::mutex> exec(exec_mu_);
  r.queue_ns = ElapsedNs(arrived);
  // Under load the wait for the slot can be long: a request whose deadline passed meanwhile is
  // not computed (its client has gone).
  if (absl::Status d = control.CheckDeadline(); !d.ok()) return d;
  absl::Status s = executor_(*item.layer, item.x.dtype(), item.out_dtype, xs, &ys, &r.timing);
  if (!s.ok()) return s;
  if (metrics_) metrics_->Batch(1, item.x.dim(0), r.timing.infer_ns * 1e-9);
  r.y = std::move(ys[0]);
  r.batch_requests = 1;
  r.batch_rows = item.x.dim(0);
  return r;
}

void Batcher::Withdraw(const Key& key, const std::shared_ptr<Pending>& p) {
  auto qit = queues_.find(key);
  if (qit == queues_.end()) return;
  Queue& q = qit->second;
  auto it = std::find(q.items.begin(), q.items.end(), p);
  if (it == q.items.end()) return;
  q.items.erase(it);
  q.rows -= p->rows;
  p->abandoned = true;
  if (metrics_) metrics_->QueueDepth(-1);
  if (p->leader) {
    p->leader = false;
    if (!q.items.empty()) {
      q.items.front()->leader = true;
      q.items.front()->cv.notify_one();
    }
  }
  if (q.items.empty()) queues_.erase(qit);
}

void Batcher::Execute(const std::vector<std::shared_ptr<Pending>>& batch) {
  std::vector<const Tensor*> xs;
  for (const auto& p : batch) xs.push_back(&p->item.x);
  const PreparedLinear& layer = *batch.front()->item.layer;
  std::vector<Tensor> ys;
  ExecutionTiming timing;
  int64_t rows = 0;
  for (const auto& p : batch) rows += p->rows;
  absl::Status s = executor_(layer, batch.front()->item.x.dtype(), batch.front()->item.out_dtype, xs, &ys, &timing);
  if (s.ok() && metrics_) metrics_->Batch(static_cast<int>(batch.size()), rows, timing.infer_ns * 1e-9);
  std::lock_guard<std::mutex> lock(mu_);
  for (size_t i = 0; i < batch.size(); ++i) {
    Pending& p = *batch[i];
    p.status = s;
    if (s.ok()) {
      p.result.y = std::move(ys[i]);
      p.result.timing = timing;
      p.result.batch_requests = static_cast<int>(batch.size());
      p.result.batch_rows = rows;
    }
    p.state = Pending::kDone;
    p.cv.notify_one();
  }
}

absl::StatusOr<GemmResult> Batcher::Run(BatchItem item, const CallControl& control) {
  // A call cancelled just as it arrived is rare: only the (cheap) deadline is checked up front.
  if (absl::Status s = control.CheckDeadline(); !s.ok()) return s;
  if (!options_.enabled) return RunAlone(std::move(item), control);

  const Key key{item.layer.get(), item.x.dtype(), item.out_dtype};
  auto p = std::make_shared<Pending>();
  p->rows = item.x.dim(0);
  p->item = std::move(item);
  p->arrived = std::chrono::steady_clock::now();
  p->deadline = control.deadline;
  const auto delay = std::chrono::microseconds(std::max<int64_t>(0, options_.max_queue_delay_us));
  const auto cancel_poll = std::chrono::microseconds(std::max<int64_t>(1, options_.cancel_poll_us));
  const SteadyTime deadline = SteadyDeadline(control);
  SteadyTime next_cancel_poll = control.cancelled ? p->arrived + cancel_poll : SteadyTime::max();
  std::unique_lock<std::mutex> lock(mu_);
  // While queued: the deadline, and cancellation once per cancel_poll, asked without the queue
  // lock (it may take tens of µs; the state is re-read after it). Once taken into a batch only
  // the deadline (the GEMM runs either way; cancelling would only drop the rows sooner).
  auto check = [&]() -> absl::Status {
    if (absl::Status s = control.CheckDeadline(); !s.ok()) return s;
    if (p->state != Pending::kQueued) return absl::OkStatus();
    const SteadyTime now = std::chrono::steady_clock::now();
    if (now < next_cancel_poll) return absl::OkStatus();
    next_cancel_poll = now + cancel_poll;
    lock.unlock();
    absl::Status s = control.Check();
    lock.lock();
    return s;
  };
  // When a waiting request must look again although nobody woke it.
  auto look_again = [&] { return p->state == Pending::kQueued ? std::min(deadline, next_cancel_poll) : deadline; };

  Queue& q = queues_[key];
  p->leader = q.items.empty();
  q.items.push_back(p);
  q.rows += p->rows;
  if (metrics_) metrics_->QueueDepth(1);
  // A leader waiting out the delay goes as soon as the batch is full.
  if (!p->leader && q.rows >= options_.max_batch_rows) q.items.front()->cv.notify_one();

  while (true) {
    if (p->state == Pending::kDone) {
      if (!p->status.ok()) return p->status;
      return std::move(p->result);
    }
    if (absl::Status s = check(); !s.ok()) {
      // Taken into a batch that is running: its rows are dropped when it ends.
      if (p->state == Pending::kQueued) Withdraw(key, p);
      return s;
    }
    if (p->state == Pending::kDone) continue;  // it may have run while check() asked without the lock
    if (p->state == Pending::kQueued && p->leader) {
      // Wait out the delay (from this request's arrival) unless the batch is already full.
      const auto until = p->arrived + delay;
      while (p->state == Pending::kQueued && p->leader && std::chrono::steady_clock::now() < until &&
             queues_[key].rows < options_.max_batch_rows) {
        p->cv.wait_until(lock, std::min(until, look_again()));
        if (absl::Status s = check(); !s.ok()) {
          Withdraw(key, p);
          return s;
        }
      }
      if (!p->leader || p->state != Pending::kQueued) continue;
      // Take the execution slot, then the batch (everything queued meanwhile joins it).
      lock.unlock();
      std::unique_lock<std::mutex> exec(exec_mu_);
      lock.lock();
      if (!p->leader || p->state != Pending::kQueued) continue;  // withdrawn meanwhile: cannot happen, but be safe
      Queue& qq = queues_[key];
      std::vector<std::shared_ptr<Pending>> batch;
      int64_t rows = 0, shed = 0;
      const auto now = std::chrono::system_clock::now();
      while (!qq.items.empty()) {
        std::shared_ptr<Pending> next = qq.items.front();
        if (next->deadline <= now) {
          // Its deadline passed while it waited (for the slot, under load): shed, not computed.
          qq.items.pop_front();
          qq.rows -= next->rows;
          ++shed;
          next->status = DeadlinePassed();
          next->state = Pending::kDone;
          next->leader = false;
          next->cv.notify_one();
          continue;
        }
        if (!batch.empty() && rows + next->rows > options_.max_batch_rows) break;
        rows += next->rows;
        next->result.queue_ns = ElapsedNs(next->arrived);
        next->state = Pending::kTaken;
        next->leader = false;
        batch.push_back(next);
        qq.items.pop_front();
      }
      qq.rows -= rows;
      if (metrics_) metrics_->QueueDepth(-static_cast<int64_t>(batch.size()) - shed);
      if (!qq.items.empty()) {
        qq.items.front()->leader = true;
        qq.items.front()->cv.notify_one();
      } else {
        queues_.erase(key);
      }
      lock.unlock();
      if (!batch.empty()) Execute(batch);
      exec.unlock();
      lock.lock();
      continue;
    }
    WaitUntil(p->cv, lock, look_again());
  }
}

}  // namespace lowbit::runtime
