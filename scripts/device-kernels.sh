#!/usr/bin/env bash
# Runs on the GPU device machine (CUDA 13, CMake, ninja, PyTorch; no apt, gRPC or GoogleTest): the
# GPU backend-ops test, the kernel benchmark on CUDA, and the torch baselines in the same session.
# Results go to $OUT (or ./device-out).
#
# The binaries come prebuilt in .devbundle (scripts/device-bundle.sh here; carry ".devbundle"):
# that saves the device the CUTLASS compilation (minutes of its 15). Without a bundle — or with
# LOWBIT_DEVICE_BUILD=1, or when the bundle's binaries do not start there — it builds
# kernels/standalone there instead; the Hopper CUTLASS kernels then need the CUTLASS headers,
# which the device lacks: carry
# ".pytools/cutlass_library/source/include" and ".pytools/cutlass_library/source/tools/util/include"
# too (≈ 28 MB; scripts/setup.sh installs them here).
# Steps run in order of what a short device session needs most, each time-boxed
# (scripts/device-steps.sh; $OUT/steps.tsv lists rc and seconds per step; LOWBIT_DEVICE_BUDGET_S,
# default 480, is the whole script's budget): the GPU backend-ops test; if it fails,
# compute-sanitizer memcheck on the small shapes (to name the faulting kernel); the kernel
# benchmark and the torch baselines; the cuBLASLt / cuBLAS paths' tests without CUTLASS (and with
# the unsplit GEMVs); the split-K and unsplit GEMVs side by side at M ≤ 16; the benchmark without
# CUTLASS; the plain kernels' benchmark; the CPU W8A8 benchmark on the device's CPU.
#   bash scripts/device-kernels.sh            # all
#   SKIP_BENCH=1 bash scripts/device-kernels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-device-out}"
mkdir -p "$out"
source scripts/device-steps.sh
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
cuda_home="${CUDA_HOME:-/usr/local/cuda}"
build_standalone() {
  gen=Ninja; command -v ninja >/dev/null || gen="Unix Makefiles"
  cmake -S kernels/standalone -B build-device -G "$gen" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCHS:-90a}" > "$out/configure.log" 2>&1
  grep "lowbit:" "$out/configure.log" | tee -a "$out/kernels-build.txt" || true  # whether CUTLASS is in
  cmake --build build-device -j "$(nproc)" > "$out/build.log" 2>&1 || { tail -50 "$out/build.log"; exit 1; }
  test_bin=./build-device/tests/kernels/kernels_backend_ops_gpu_test
  bench_bin=./build-device/bench/kernels/lowbit-bench-kernels
}
if [[ -f .devbundle/bundle.tar.xz && -z "${LOWBIT_DEVICE_BUILD:-}" ]]; then
  source scripts/device-unpack-bundle.sh "$out/kernels-build.txt"
  test_bin="$bundle/bin/kernels_backend_ops_gpu_test"
  bench_bin="$bundle/bin/lowbit-bench-kernels"
  # Built on another image: if its binaries do not start here (a missing or older system library),
  # build kernels/standalone instead of losing the session (carry the CUTLASS headers too, above).
  # (The benchmark answers an unknown flag with a usage error, exit 2, once it has started.)
  probe="$("$bench_bin" --no-such-flag 2>&1 || true)"
  echo "$probe" > "$out/bundle-probe.log"
  if [[ "$probe" != *"unknown flag"* ]] || ! "$test_bin" --gtest_list_tests >> "$out/bundle-probe.log" 2>&1; then
    echo "the bundle's binaries do not start on this machine ($out/bundle-probe.log): building kernels/standalone" |
      tee -a "$out/kernels-build.txt"
    build_standalone
  fi
else
  build_standalone
fi
# LOWBIT_CUDA_TRACE=1: the backend prints each GEMM path it takes (once per op, shape and path),
# so the logs show which kernel ran where (fallbacks are otherwise silent).
export LOWBIT_CUDA_TRACE=1
step ctest-gpu 240 "$test_bin"
# (Not after a timeout: a hang would hang under the sanitizer too.)
if ! grep -q "ctest-gpu	0	" "$out/steps.tsv" && ! grep -q "ctest-gpu	124	" "$out/steps.tsv"; then
  # A fault or a wrong result: memcheck the small shapes of the whole table (the big ones would take
  # minutes under the sanitizer) to name the kernel and the access.
  sanitizer="$(command -v compute-sanitizer || echo "$cuda_home/bin/compute-sanitizer")"
  LOWBIT_TEST_SHAPES=small step memcheck 120 "$sanitizer" --tool memcheck --print-limit 20 "$test_bin"
fi
# The W8A8 / FP8 / W4A16 cases once more without the CUTLASS kernels: the cuBLASLt / cuBLAS paths
# they replace on sm_90 (one process: a fault in one case would end the others).
no_cutlass_filter=BackendOps.GemmW8A8:BackendOps.GemmFp8:BackendOps.GemmW4A16
no_cutlass_filter+=:BackendOps.RepeatedShapesReuseCublasLtPlansWithNewScales
if [[ -z "${SKIP_BENCH:-}" ]]; then
  step bench-cuda 210 "$bench_bin" --backend cuda --ms 1,16,64,128,256,1024,4096 \
    --ops w8a8,w8a8_quant,fp8,w4a16,quant_int8 --reps 3 --out "$out"
  step torch-baselines 90 python3 -u bench/kernels/torch_baselines.py --ms 1,16,64,128,256,1024,4096 \
    --reps 3 --out "$out/torch-baselines.csv"
fi
# Also the unsplit GEMVs at every M ≤ 16 (the default takes the split-K ones from M = 5).
LOWBIT_CUDA_NO_CUTLASS=1 LOWBIT_CUDA_GEMV_SPLIT_MIN_M=17 step gpu-no-cutlass 120 "$test_bin" \
  --gtest_filter="$no_cutlass_filter"
if [[ -z "${SKIP_BENCH:-}" ]]; then
  # The GEMVs both ways at M ≤ 16 (which M should take the split-K kernels): K split across
  # blocks of 64 (8-bit) / 128 (int4) weight rows (MIN_M=1), or not (MIN_M=17).
  LOWBIT_CUDA_GEMV_SPLIT_MIN_M=1 step bench-gemv-split 60 "$bench_bin" --backend cuda --ms 1,4,8,16 \
    --ops w8a8,fp8,w4a16 --reps 2 --out "$out/gemv-split"
  LOWBIT_CUDA_GEMV_SPLIT_MIN_M=17 step bench-gemv-unsplit 60 "$bench_bin" --backend cuda --ms 1,4,8,16 \
    --ops w8a8,fp8,w4a16 --reps 2 --out "$out/gemv-unsplit"
  # W8A8 / FP8 / W4A16 at M > 16 without the CUTLASS kernels (cuBLASLt + a separate epilogue;
  # dequantize + cuBLAS), beside the run above: writes no-cutlass/kernels-cuda.{md,csv}.
  LOWBIT_CUDA_NO_CUTLASS=1 step bench-cuda-no-cutlass 60 "$bench_bin" --backend cuda --ms 64,128,256,1024,4096 \
    --ops w8a8,fp8,w4a16 --reps 3 --out "$out/no-cutlass"
  # The plain kernels on the shapes where the library paths take over (writes kernels-cuda-simple.*).
  step bench-cuda-simple 40 "$bench_bin" --backend cuda-simple --ms 256,4096 --ops w8a8,fp8 --reps 2 --out "$out"
  step plot 20 python3 bench/kernels/plot.py "$out/kernels-cuda.csv" "$out/kernels-cuda.png" "$out/torch-baselines.csv"
  # Last, if time is left: the CPU target (W8A8 ≥ 2.5× OpenBLAS sgemm at M ≥ 64) on the device's
  # server CPU (AVX-512 VNNI where it has it; the build machine has only AVX2). Writes kernels-cpu.*.
  step bench-cpu 45 "$bench_bin" --backend cpu --ops sgemm,w8a8 --ms 64,256 --reps 1 --out "$out"
fi
# Each GPU target of the kernels issue, met or not, from whatever the steps above wrote.
python3 bench/kernels/targets.py "$out" > "$out/targets.log" 2>&1 || true
# Which paths ran, counted over the test's and the benchmark's calls.
grep -h "lowbit cuda path:" "$out"/*.log 2>/dev/null | sed 's/.* -> //' | sort | uniq -c > "$out/paths.txt" || true
# CUTLASS reports a TMA descriptor it could not encode on stderr and (NDEBUG) goes on: a failure.
if grep -l "Failed to initialize the TMA descriptor" "$out"/*.log 2>/dev/null; then
  echo "CUTLASS could not encode a TMA descriptor (logs above)"
  rc=1
fi
cat "$out/paths.txt" "$out/steps.tsv" "$out/targets.md" 2>/dev/null || true
exit $rc
