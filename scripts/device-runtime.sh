#!/usr/bin/env bash
# Run ON the GPU device machine, with .devbundle carried (make it here first with
# scripts/device-bundle.sh): the runtime's integration tests on the CUDA backend
# (cuda.runtime_service_test.* under ctest; every RPC, every scheme against the double-precision
# reference, batching bit for bit), then `lowbit bench-rpc` with the runtimes on CUDA (Gemm
# latency and RPC overhead, batching at 1 / 8 / 64 clients, streaming). Results go to $OUT (or
# ./device-out).
# Time-boxed steps (scripts/device-steps.sh; LOWBIT_DEVICE_BUDGET_S, default here 240: what a
# 15-minute device session has left after scripts/device-kernels.sh).
#   bash scripts/device-runtime.sh             # tests + bench
#   SKIP_BENCH=1 bash scripts/device-runtime.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-device-out}"
mkdir -p "$out"
LOWBIT_DEVICE_BUDGET_S="${LOWBIT_DEVICE_BUDGET_S:-240}"
source scripts/device-steps.sh
source scripts/device-unpack-bundle.sh "$out/bundle.txt"
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
missing="$(ldd "$bundle"/bin/* | grep 'not found' || true)"
if [[ -n "$missing" ]]; then echo "unresolved libraries: $missing" | tee "$out/ldd.txt"; exit 1; fi
LOWBIT_TEST_BACKEND=cuda step runtime-cuda-tests 90 "$bundle/bin/runtime_service_test"
if [[ -z "${SKIP_BENCH:-}" ]]; then
  step bench-rpc-cuda 90 "$bundle/bin/lowbit" bench-rpc --out "$out/bench-rpc-cuda" --bench_backend cuda
  step bench-rpc-cpu 60 "$bundle/bin/lowbit" bench-rpc --out "$out/bench-rpc-cpu" --bench_backend cpu \
    --bench_clients 1,64
fi
cat "$out/steps.tsv"
exit $rc
