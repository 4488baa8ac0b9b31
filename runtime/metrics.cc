#include "runtime/metrics.h"

namespace lowbit::runtime {

RuntimeMetrics::RuntimeMetrics(prometheus::Registry& registry) {
  queue_depth_ = &prometheus::BuildGauge()
                      .Name("lowbit_runtime_queue_depth")
                      .Help("Gemm requests waiting in the batcher")
                      .Register(registry)
                      .Add({});
  batch_requests_ = &prometheus::BuildHistogram()
                         .Name("lowbit_runtime_batch_requests")
                         .Help("Requests coalesced into one GEMM")
                         .Register(registry)
                         .Add({}, prometheus::Histogram::BucketBoundaries{1, 2, 4, 8, 16, 32, 64, 128, 256});
  batch_rows_ = &prometheus::BuildHistogram()
                     .Name("lowbit_runtime_batch_rows")
                     .Help("Rows (M) of each GEMM the runtime ran")
                     .Register(registry)
                     .Add({}, prometheus::Histogram::BucketBoundaries{1, 4, 16, 64, 256, 1024, 4096, 16384});
  kernel_seconds_ = &prometheus::BuildHistogram()
                         .Name("lowbit_runtime_gemm_seconds")
                         .Help("Time of each GEMM (activation quantization + GEMM)")
                         .Register(registry)
                         .Add({}, prometheus::Histogram::BucketBoundaries{1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2,
                                                                          3e-2, 0.1, 0.3, 1});
  gemms_ = &prometheus::BuildCounter()
                .Name("lowbit_runtime_gemms_total")
                .Help("GEMMs the runtime ran (one per batch)")
                .Register(registry)
                .Add({});
  models_ = &prometheus::BuildGauge()
                 .Name("lowbit_runtime_models_loaded")
                 .Help("Models loaded")
                 .Register(registry)
                 .Add({});
  memory_used_ = &prometheus::BuildGauge()
                      .Name("lowbit_runtime_memory_used_bytes")
                      .Help("Weight bytes held by loaded models")
                      .Register(registry)
                      .Add({});
  memory_budget_ = &prometheus::BuildGauge()
                        .Name("lowbit_runtime_memory_budget_bytes")
                        .Help("Weight memory budget (0 = unlimited)")
                        .Register(registry)
                        .Add({});
}

void RuntimeMetrics::Batch(int requests, int64_t rows, double kernel_seconds) {
  batch_requests_->Observe(requests);
  batch_rows_->Observe(static_cast<double>(rows));
  kernel_seconds_->Observe(kernel_seconds);
  gemms_->Increment();
}

void RuntimeMetrics::Models(size_t count, int64_t used_bytes, int64_t budget_bytes) {
  models_->Set(static_cast<double>(count));
  memory_used_->Set(static_cast<double>(used_bytes));
  memory_budget_->Set(static_cast<double>(budget_bytes));
}

}  // namespace lowbit::runtime
