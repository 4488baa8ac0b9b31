#!/usr/bin/env bash
# Builds the whole project (services, tools, tests; no CUDA) with AddressSanitizer +
# UndefinedBehaviorSanitizer (gcc) into build-asan/ and runs the CPU test suite under them: any
# invalid memory access, leak or undefined behaviour fails its test. Not part of CI (a cold build
# takes 30-45 min on 2 cores); run it after changes to memory-handling code.
#   bash scripts/sanitize.sh               # build + every non-GPU test
#   bash scripts/sanitize.sh -R rpc_test   # extra arguments go to ctest
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLOWBIT_CUDA=OFF -DLOWBIT_BENCH=OFF \
  -DLOWBIT_SANITIZE=ON -DCMAKE_CXX_COMPILER_LAUNCHER=ccache >/dev/null
cmake --build build-asan -j2
# halt_on_error: the first report fails the test; detect_leaks: LeakSanitizer at exit.
export ASAN_OPTIONS="${ASAN_OPTIONS:-halt_on_error=1:detect_leaks=1:abort_on_error=0}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
export LSAN_OPTIONS="${LSAN_OPTIONS:-suppressions=$PWD/scripts/lsan-suppressions.txt}"
cd build-asan
# deploy_dockerfiles checks that the images install every library the built binaries link: an
# ASan build links libasan / libubsan, which the images rightly do not carry.
ctest -LE gpu -E '^deploy_dockerfiles$' -j2 --output-on-failure --timeout 1200 "$@"
