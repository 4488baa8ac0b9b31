// A small persistent thread pool: ParallelFor hands out task indices from an atomic counter;
// the calling thread works too. One ParallelFor at a time (a backend is used by one thread).
#ifndef LOWBIT_KERNELS_CPU_THREAD_POOL_H_
#define LOWBIT_KERNELS_CPU_THREAD_POOL_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace lowbit::kernels {

class ThreadPool {
 public:
  explicit ThreadPool(int threads);  // total threads including the caller
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;
  int threads() const { return static_cast<int>(workers_.size()) + 1; }
  // Runs fn(worker, task) for task in [0, tasks); worker in [0, threads()).
  void ParallelFor(int64_t tasks, const std::function<void(int, int64_t)>& fn);

 private:
  void WorkerLoop(int worker);
  void Drain(int worker);
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable start_cv_, done_cv_;
  uint64_t generation_ = 0;
  std::atomic<int> active_{0};  // workers still draining this generation
  bool stop_ = false;
  const std::function<void(int, int64_t)>* fn_ = nullptr;
  int64_t tasks_ = 0;
  std::atomic<int64_t> next_{0};
};

}  // namespace lowbit::kernels

#endif  // LOWBIT_KERNELS_CPU_THREAD_POOL_H_
