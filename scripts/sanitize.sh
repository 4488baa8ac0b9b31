#!/usr/bin/env bash
# Builds with sanitizers (gcc, no CUDA, no bench) and runs the CPU tests under them: any invalid
# memory access, leak, undefined behaviour or data race fails its test. Not part of CI (a cold
# build takes 30-45 min on 2 cores); run it after changes to memory-handling or threaded code.
#   bash scripts/sanitize.sh                  # build-asan/: ASan + UBSan, everything, every non-GPU test
#   bash scripts/sanitize.sh -R rpc_test      # extra arguments go to ctest
#   bash scripts/sanitize.sh thread [ARGS]    # build-tsan/: ThreadSanitizer, the tests below
# ThreadSanitizer covers the threaded code that does not run inside gRPC: the kernels' thread pool
# (the CPU backend-ops table), the runtime's batcher, the streaming file writer's background
# thread and the safetensors writer. Tests that run gRPC are left out: Debian's gRPC is not
# instrumented, so TSan cannot see its synchronization and reports its hand-offs as races
# (rpc_test: 829 reports, every one inside gRPC or at a call into it), which would hide a real
# one; that needs a gRPC built with TSan.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=build-asan
flag=-DLOWBIT_SANITIZE=ON
targets=()
if [[ "${1:-}" == thread ]]; then
  shift
  dir=build-tsan
  flag=-DLOWBIT_TSAN=ON
  targets=(--target batcher_test safetensors_test streaming_file_writer_test kernels_backend_ops_test)
  (( $# > 0 )) || set -- -R '^(BatcherTest|SafetensorsTest|StreamingFileWriterTest|kernels_backend_ops_test)[.]'
fi
cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLOWBIT_CUDA=OFF -DLOWBIT_BENCH=OFF \
  "$flag" -DCMAKE_CXX_COMPILER_LAUNCHER=ccache >/dev/null
cmake --build "$dir" -j2 "${targets[@]}"
# halt_on_error: the first report fails the test; detect_leaks: LeakSanitizer at exit.
export ASAN_OPTIONS="${ASAN_OPTIONS:-halt_on_error=1:detect_leaks=1:abort_on_error=0}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
export LSAN_OPTIONS="${LSAN_OPTIONS:-suppressions=$PWD/scripts/lsan-suppressions.txt}"
export TSAN_OPTIONS="${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1}"
cd "$dir"
# deploy_dockerfiles checks that the images install every library the built binaries link: a
# sanitized build links libasan / libubsan / libtsan, which the images rightly do not carry.
ctest -LE gpu -E '^deploy_dockerfiles$' -j2 --output-on-failure --timeout 1200 "$@"
