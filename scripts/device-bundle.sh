#!/usr/bin/env bash
# Run HERE (the build machine), before a device call: packs what the device machine lacks (it has
# CUDA 13, CMake and PyTorch, but no gRPC, protobuf, Abseil, OpenBLAS, GoogleTest or CUTLASS…) into
# .devbundle/bundle.tar.xz — the runtime, CLI, calibrator, lowbit-rtn, the runtime's integration
# test, the GPU backend-ops test and the kernel benchmark, built here, with every shared library
# they load except glibc, libstdc++/libgcc (the device's are newer) and CUDA's own (the device's
# CUDA 13 is used). .devbundle/ is git-ignored; name it in the device run's `carry`, then run
# scripts/device-kernels.sh and scripts/device-runtime.sh there.
set -euo pipefail
cd "$(dirname "$0")/.."
build="${BUILD_DIR:-build}"
bins=(cli/lowbit runtime/lowbit-runtime calibrator/lowbit-calibrator tools/lowbit-rtn
      tests/integration/runtime_service_test tests/kernels/kernels_backend_ops_gpu_test
      bench/kernels/lowbit-bench-kernels)
ninja -C "$build" "${bins[@]}"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin" "$stage/lib" .devbundle
for b in "${bins[@]}"; do strip -o "$stage/bin/$(basename "$b")" "$build/$b"; done  # no debug info
# System and CUDA libraries stay behind; everything else travels.
skip='/(libc|libm|libdl|libpthread|librt|libstdc\+\+|libgcc_s|ld-linux-x86-64|libcuda|libcudart|libcublas|libcublasLt)\.so'
for b in "$stage"/bin/*; do ldd "$b"; done | awk '$2 == "=>" && $3 ~ /^\// {print $3}' | sort -u |
  grep -Ev "$skip" | while read -r lib; do cp -L "$lib" "$stage/lib/"; done
git rev-parse HEAD > "$stage/COMMIT"
# The sources the binaries were built from, hashed, so the device run can tell a stale bundle
# (scripts/device-unpack-bundle.sh) instead of measuring old code.
git ls-files --cached --others --exclude-standard -- common kernels bench runtime rpc calibrator cli proto tools tests |
  while read -r f; do [[ -f "$f" ]] && echo "$f"; done | xargs -d '\n' sha256sum > "$stage/SOURCES.sha256"
tar -C "$stage" -cJf .devbundle/bundle.tar.xz .
ls -l .devbundle/bundle.tar.xz
