#include "runtime/batcher.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace lowbit::runtime {

absl::Status CallControl::Check() const {
  if (deadline != std::chrono::system_clock::time_point::max() && std::chrono::system_clock::now() >= deadline) {
    return absl::DeadlineExceededError("the call's deadline passed while the request waited to run");
  }
  if (cancelled && cancelled()) return absl::CancelledError("the call was cancelled by the client");
  return absl::OkStatus();
}

struct Batcher::Pending {
  BatchItem item;
  int64_t rows = 0;
  std::chrono::steady_clock::time_point arrived;
  enum State { kQueued, kTaken, kDone } state = kQueued;
  bool leader = false;
  bool abandoned = false;
  absl::Status status;
  GemmResult result;
};

absl::StatusOr<GemmResult> Batcher::RunAlone(BatchItem item) {
  std::vector<const Tensor*> xs = {&item.x};
  std::vector<Tensor> ys;
  double us = 0;
  std::lock_guard<std::mutex> exec(exec_mu_);
  absl::Status s = executor_(*item.layer, item.x.dtype(), item.out_dtype, xs, &ys, &us);
  if (!s.ok()) return s;
  if (metrics_) metrics_->Batch(1, item.x.dim(0), us * 1e-6);
  GemmResult r;
  r.y = std::move(ys[0]);
  r.kernel_us = us;
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
    if (!q.items.empty()) q.items.front()->leader = true;
  }
  if (q.items.empty()) queues_.erase(qit);
  cv_.notify_all();
}

void Batcher::Execute(const std::vector<std::shared_ptr<Pending>>& batch) {
  std::vector<const Tensor*> xs;
  for (const auto& p : batch) xs.push_back(&p->item.x);
  const PreparedLinear& layer = *batch.front()->item.layer;
  std::vector<Tensor> ys;
  double us = 0;
  int64_t rows = 0;
  for (const auto& p : batch) rows += p->rows;
  absl::Status s = executor_(layer, batch.front()->item.x.dtype(), batch.front()->item.out_dtype, xs, &ys, &us);
  if (s.ok() && metrics_) metrics_->Batch(static_cast<int>(batch.size()), rows, us * 1e-6);
  std::lock_guard<std::mutex> lock(mu_);
  for (size_t i = 0; i < batch.size(); ++i) {
    Pending& p = *batch[i];
    p.status = s;
    if (s.ok()) {
      p.result.y = std::move(ys[i]);
      p.result.kernel_us = us;
      p.result.batch_requests = static_cast<int>(batch.size());
      p.result.batch_rows = rows;
    }
    p.state = Pending::kDone;
  }
  cv_.notify_all();
}

absl::StatusOr<GemmResult> Batcher::Run(BatchItem item, const CallControl& control) {
  if (absl::Status s = control.Check(); !s.ok()) return s;
  if (!options_.enabled) return RunAlone(std::move(item));

  const Key key{item.layer.get(), item.x.dtype(), item.out_dtype};
  auto p = std::make_shared<Pending>();
  p->rows = item.x.dim(0);
  p->item = std::move(item);
  p->arrived = std::chrono::steady_clock::now();
  const auto delay = std::chrono::microseconds(std::max<int64_t>(0, options_.max_queue_delay_us));
  const auto poll = std::chrono::milliseconds(5);

  std::unique_lock<std::mutex> lock(mu_);
  Queue& q = queues_[key];
  p->leader = q.items.empty();
  q.items.push_back(p);
  q.rows += p->rows;
  if (metrics_) metrics_->QueueDepth(1);
  cv_.notify_all();

  while (true) {
    if (p->state == Pending::kDone) {
      if (!p->status.ok()) return p->status;
      return std::move(p->result);
    }
    if (p->state == Pending::kQueued) {
      if (absl::Status s = control.Check(); !s.ok()) {
        Withdraw(key, p);
        return s;
      }
    } else if (absl::Status s = control.Check(); !s.ok()) {
      return s;  // taken into a batch that is running: its rows are dropped when it ends
    }
    if (p->state == Pending::kQueued && p->leader) {
      // Wait out the delay (from this request's arrival) unless the batch is already full.
      const auto until = p->arrived + delay;
      while (p->state == Pending::kQueued && p->leader && std::chrono::steady_clock::now() < until &&
             queues_[key].rows < options_.max_batch_rows) {
        cv_.wait_until(lock, std::min(until, std::chrono::steady_clock::now() + poll));
        if (!control.Check().ok()) break;
      }
      if (!p->leader || p->state != Pending::kQueued || !control.Check().ok()) continue;
      // Take the execution slot, then the batch (everything queued meanwhile joins it).
      lock.unlock();
      std::unique_lock<std::mutex> exec(exec_mu_);
      lock.lock();
      if (!p->leader || p->state != Pending::kQueued) continue;  // withdrawn meanwhile: cannot happen, but be safe
      Queue& qq = queues_[key];
      std::vector<std::shared_ptr<Pending>> batch;
      int64_t rows = 0;
      while (!qq.items.empty()) {
        const auto& next = qq.items.front();
        if (!batch.empty() && rows + next->rows > options_.max_batch_rows) break;
        rows += next->rows;
        next->state = Pending::kTaken;
        next->leader = false;
        batch.push_back(next);
        qq.items.pop_front();
      }
      qq.rows -= rows;
      if (metrics_) metrics_->QueueDepth(-static_cast<int64_t>(batch.size()));
      if (!qq.items.empty()) {
        qq.items.front()->leader = true;
      } else {
        queues_.erase(key);
      }
      cv_.notify_all();
      lock.unlock();
      Execute(batch);
      exec.unlock();
      lock.lock();
      continue;
    }
    cv_.wait_for(lock, poll);
  }
}

}  // namespace lowbit::runtime
