#!/usr/bin/env bash
# Runs on the GPU device machine (CUDA 13, CMake, ninja, PyTorch; no apt, gRPC or GoogleTest): the
# GPU backend-ops test, the kernel benchmark on CUDA, and the torch baselines in the same session.
# Results go to $OUT (or ./device-out).
#
# The binaries come prebuilt in .devbundle (scripts/device-bundle.sh here; carry ".devbundle"):
# that saves the device the CUTLASS compilation (minutes of its 15). Without a bundle — or with
# LOWBIT_DEVICE_BUILD=1 — it builds kernels/standalone there instead; the Hopper CUTLASS kernels
# then need the CUTLASS headers, which the device lacks: carry
# ".pytools/cutlass_library/source/include" and ".pytools/cutlass_library/source/tools/util/include"
# too (≈ 28 MB; scripts/setup.sh installs them here).
#   bash scripts/device-kernels.sh            # all
#   SKIP_BENCH=1 bash scripts/device-kernels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-device-out}"
mkdir -p "$out"
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
rc=0
if [[ -f .devbundle/bundle.tar.xz && -z "${LOWBIT_DEVICE_BUILD:-}" ]]; then
  bundle="$(mktemp -d)"
  tar -C "$bundle" -xJf .devbundle/bundle.tar.xz
  cuda_home="${CUDA_HOME:-/usr/local/cuda}"
  export LD_LIBRARY_PATH="$bundle/lib:$cuda_home/lib64:$cuda_home/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  echo "prebuilt kernels of commit $(cat "$bundle/COMMIT")" | tee "$out/kernels-build.txt"
  test_bin="$bundle/bin/kernels_backend_ops_gpu_test"
  bench_bin="$bundle/bin/lowbit-bench-kernels"
  "$test_bin" 2>&1 | tee "$out/ctest-gpu.log" || rc=$?
else
  gen=Ninja; command -v ninja >/dev/null || gen="Unix Makefiles"
  cmake -S kernels/standalone -B build-device -G "$gen" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCHS:-90a}" > "$out/configure.log" 2>&1
  grep "lowbit:" "$out/configure.log" | tee "$out/kernels-build.txt" || true  # whether CUTLASS is in
  cmake --build build-device -j "$(nproc)" > "$out/build.log" 2>&1 || { tail -50 "$out/build.log"; exit 1; }
  test_bin=./build-device/tests/kernels/kernels_backend_ops_gpu_test
  bench_bin=./build-device/bench/kernels/lowbit-bench-kernels
  ctest --test-dir build-device -L gpu --output-on-failure 2>&1 | tee "$out/ctest-gpu.log" || rc=$?
  ctest --test-dir build-device -LE gpu --output-on-failure > "$out/ctest-cpu.log" 2>&1 || rc=$?
fi
# The W8A8 / FP8 / W4A16 cases once more without the CUTLASS kernels: the cuBLASLt / cuBLAS paths
# they replace on sm_90.
for t in GemmW8A8 GemmFp8 GemmW4A16 RepeatedShapesReuseCublasLtPlansWithNewScales; do
  LOWBIT_CUDA_NO_CUTLASS=1 "$test_bin" --gtest_filter=BackendOps.$t >> "$out/gpu-no-cutlass.log" 2>&1 || rc=$?
done
if [[ -z "${SKIP_BENCH:-}" ]]; then
  "$bench_bin" --backend cuda --ms 1,16,64,256,1024,4096 \
    --ops w8a8,w8a8_quant,fp8,w4a16,quant_int8 --reps 5 --out "$out" 2>&1 | tee "$out/bench-cuda.log"
  # The plain kernels on the shapes where the library paths (cuBLASLt int8 / FP8) take over, to
  # see what they bring (and that they were taken): writes kernels-cuda-simple.{md,csv}.
  "$bench_bin" --backend cuda-simple --ms 256,4096 \
    --ops w8a8,fp8 --reps 3 --out "$out" 2>&1 | tee "$out/bench-cuda-simple.log" || rc=$?
  # W8A8 / FP8 / W4A16 at M > 16 without the CUTLASS kernels (cuBLASLt + a separate epilogue;
  # dequantize + cuBLAS), side by side with the run above: writes no-cutlass/kernels-cuda.{md,csv}.
  LOWBIT_CUDA_NO_CUTLASS=1 "$bench_bin" --backend cuda --ms 64,256,1024,4096 \
    --ops w8a8,fp8,w4a16 --reps 3 --out "$out/no-cutlass" 2>&1 | tee "$out/bench-cuda-no-cutlass.log" || rc=$?
  python3 bench/kernels/torch_baselines.py --ms 1,16,64,256,1024,4096 --out "$out/torch-baselines.csv" \
    2>&1 | tee "$out/torch-baselines.log" || rc=$?
  python3 bench/kernels/plot.py "$out/kernels-cuda.csv" "$out/kernels-cuda.png" "$out/torch-baselines.csv" || true
fi
exit $rc
