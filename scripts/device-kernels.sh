#!/usr/bin/env bash
# Runs on the GPU device machine (CUDA 13, CMake, ninja, PyTorch; no apt, gRPC or GoogleTest):
# builds kernels/ standalone, runs the GPU backend-ops test (ctest -L gpu), the kernel benchmark
# on CUDA, and the torch baselines in the same session. Results go to $OUT (or ./device-out).
#   bash scripts/device-kernels.sh            # all
#   SKIP_BENCH=1 bash scripts/device-kernels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-device-out}"
mkdir -p "$out"
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
gen=Ninja; command -v ninja >/dev/null || gen="Unix Makefiles"
cmake -S kernels/standalone -B build-device -G "$gen" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCHS:-90a}" > "$out/configure.log" 2>&1
cmake --build build-device -j "$(nproc)" > "$out/build.log" 2>&1 || { tail -50 "$out/build.log"; exit 1; }
rc=0
ctest --test-dir build-device -L gpu --output-on-failure 2>&1 | tee "$out/ctest-gpu.log" || rc=$?
ctest --test-dir build-device -LE gpu --output-on-failure > "$out/ctest-cpu.log" 2>&1 || rc=$?
if [[ -z "${SKIP_BENCH:-}" ]]; then
  ./build-device/bench/kernels/lowbit-bench-kernels --backend cuda --ms 1,16,64,256,1024,4096 \
    --ops w8a8,w8a8_quant,fp8,w4a16,quant_int8 --reps 5 --out "$out" 2>&1 | tee "$out/bench-cuda.log"
  # The plain kernels on the shapes where the library paths (cuBLASLt int8 / FP8) take over, to
  # see what they bring (and that they were taken): writes kernels-cuda-simple.{md,csv}.
  ./build-device/bench/kernels/lowbit-bench-kernels --backend cuda-simple --ms 256,4096 \
    --ops w8a8,fp8 --reps 3 --out "$out" 2>&1 | tee "$out/bench-cuda-simple.log" || rc=$?
  python3 bench/kernels/torch_baselines.py --ms 1,16,64,256,1024,4096 --out "$out/torch-baselines.csv" \
    2>&1 | tee "$out/torch-baselines.log" || rc=$?
  python3 bench/kernels/plot.py "$out/kernels-cuda.csv" "$out/kernels-cuda.png" "$out/torch-baselines.csv" || true
fi
exit $rc
