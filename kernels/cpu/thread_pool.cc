#include "kernels/cpu/thread_pool.h"

#include <chrono>

namespace lowbit::kernels {
namespace {

constexpr int kSpinMicros = 200;

inline void CpuRelax() {
#if defined(__x86_64__)
  __builtin_ia32_pause();
#endif
}

}  // namespace

ThreadPool::ThreadPool(int threads) {
  for (int i = 1; i < threads; ++i) workers_.emplace_back([this, i] { WorkerLoop(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_ = true;
  }
  start_cv_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::Drain(int worker) {
  for (;;) {
    int64_t t = next_.fetch_add(1, std::memory_order_relaxed);
    if (t >= tasks_) break;
    (*fn_)(worker, t);
  }
}

void ThreadPool::WorkerLoop(int worker) {
  uint64_t seen = 0;
  for (;;) {
    {
      std::unique_lock<std::mutex> l(mu_);
      start_cv_.wait(l, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
    }
    Drain(worker);
    if (active_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      std::lock_guard<std::mutex> l(mu_);  // the caller checks active_ under mu_ before it sleeps
      done_cv_.notify_one();
    }
  }
}

void ThreadPool::ParallelFor(int64_t tasks, const std::function<void(int, int64_t)>& fn) {
  if (tasks <= 0) return;
  if (workers_.empty() || tasks == 1) {
    for (int64_t t = 0; t < tasks; ++t) fn(0, t);
    return;
  }
  {
    std::lock_guard<std::mutex> l(mu_);
    fn_ = &fn;
    tasks_ = tasks;
    next_.store(0, std::memory_order_relaxed);
    active_.store(static_cast<int>(workers_.size()), std::memory_order_relaxed);
    ++generation_;
  }
  start_cv_.notify_all();
  Drain(0);
  // The workers usually finish within microseconds of the caller; spin briefly before sleeping,
  // since waking a sleeping thread costs tens of microseconds on a VM (a cross-CPU interrupt).
  const auto spin_until = std::chrono::steady_clock::now() + std::chrono::microseconds(kSpinMicros);
  while (active_.load(std::memory_order_acquire) != 0 && std::chrono::steady_clock::now() < spin_until) {
    CpuRelax();
  }
  std::unique_lock<std::mutex> l(mu_);
  done_cv_.wait(l, [&] { return active_.load(std::memory_order_acquire) == 0; });
  fn_ = nullptr;
}

}  // namespace lowbit::kernels
