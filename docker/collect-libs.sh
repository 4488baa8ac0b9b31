#!/usr/bin/env bash
# Copies the shared libraries the given binaries need into DEST, for a final image whose base
# does not have them (Dockerfile.cuda: Debian-built binaries on NVIDIA's Ubuntu runtime image).
# Left out, because the base image provides them (newer and ABI-compatible) or they must
# come from it: glibc and the dynamic loader, libstdc++ / libgcc_s, zlib, and the CUDA
# libraries (cudart, cuBLAS, cuBLASLt from the image; libcuda from the host driver).
# Fails if any library is not found. Tested by tests/deploy (deploy_collect_libs).
# usage: collect-libs.sh DEST BINARY...
set -euo pipefail
dest=$1; shift
mkdir -p "$dest"
skip='^(linux-vdso|ld-linux|libc|libm|libdl|libpthread|librt|libresolv|libutil|libstdc\+\+|libgcc_s|libz|libcuda|libcudart|libcublas|libcublasLt|libnvidia-[a-z-]+|libnvrtc|libnvJitLink)\.so'
status=0
for bin in "$@"; do
  while read -r name arrow path rest; do
    if [ "$arrow" != "=>" ]; then continue; fi
    if [[ "$name" =~ $skip ]]; then continue; fi
    if [ "$path" = "not" ]; then echo "collect-libs: $bin needs $name: not found" >&2; status=1; continue; fi
    cp -L -n "$path" "$dest/$name"
  done < <(ldd "$bin")
done
exit $status
