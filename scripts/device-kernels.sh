#!/usr/bin/env bash
# Runs on the GPU device machine (CUDA 13, CMake, ninja, PyTorch; no apt, gRPC or GoogleTest):
# builds kernels/ standalone, runs the GPU backend-ops test (ctest -L gpu), the kernel benchmark
# on CUDA, and the torch baselines in the same session. Results go to $OUT (or ./device-out).
# The Hopper CUTLASS kernels need the CUTLASS headers, which the device machine lacks: name
# ".pytools/cutlass_library/source/include" and ".pytools/cutlass_library/source/tools/util/include"
# in the device call's `carry` (≈ 28 MB; scripts/setup.sh installs them here).
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
grep "lowbit:" "$out/configure.log" || true  # whether the CUTLASS kernels are in
cmake --build build-device -j "$(nproc)" > "$out/build.log" 2>&1 || { tail -50 "$out/build.log"; exit 1; }
rc=0
ctest --test-dir build-device -L gpu --output-on-failure 2>&1 | tee "$out/ctest-gpu.log" || rc=$?
# The W8A8 / FP8 / W4A16 cases once more without the CUTLASS kernels: the cuBLASLt / cuBLAS paths
# they replace on sm_90.
for t in GemmW8A8 GemmFp8 GemmW4A16 RepeatedShapesReuseCublasLtPlansWithNewScales; do
  LOWBIT_CUDA_NO_CUTLASS=1 ./build-device/tests/kernels/kernels_backend_ops_gpu_test --gtest_filter=BackendOps.$t \
    >> "$out/gpu-no-cutlass.log" 2>&1 || rc=$?
done
ctest --test-dir build-device -LE gpu --output-on-failure > "$out/ctest-cpu.log" 2>&1 || rc=$?
if [[ -z "${SKIP_BENCH:-}" ]]; then
  ./build-device/bench/kernels/lowbit-bench-kernels --backend cuda --ms 1,16,64,256,1024,4096 \
    --ops w8a8,w8a8_quant,fp8,w4a16,quant_int8 --reps 5 --out "$out" 2>&1 | tee "$out/bench-cuda.log"
  # The plain kernels on the shapes where the library paths (cuBLASLt int8 / FP8) take over, to
  # see what they bring (and that they were taken): writes kernels-cuda-simple.{md,csv}.
  ./build-device/bench/kernels/lowbit-bench-kernels --backend cuda-simple --ms 256,4096 \
    --ops w8a8,fp8 --reps 3 --out "$out" 2>&1 | tee "$out/bench-cuda-simple.log" || rc=$?
  # W8A8 / FP8 / W4A16 at M > 16 without the CUTLASS kernels (cuBLASLt + a separate epilogue; dequantize
  # + cuBLAS), side by side with the run above: writes no-cutlass/kernels-cuda.{md,csv}.
  LOWBIT_CUDA_NO_CUTLASS=1 ./build-device/bench/kernels/lowbit-bench-kernels --backend cuda --ms 64,256,1024,4096 \
    --ops w8a8,fp8,w4a16 --reps 3 --out "$out/no-cutlass" 2>&1 | tee "$out/bench-cuda-no-cutlass.log" || rc=$?
  python3 bench/kernels/torch_baselines.py --ms 1,16,64,256,1024,4096 --out "$out/torch-baselines.csv" \
    2>&1 | tee "$out/torch-baselines.log" || rc=$?
  python3 bench/kernels/plot.py "$out/kernels-cuda.csv" "$out/kernels-cuda.png" "$out/torch-baselines.csv" || true
fi
exit $rc
