#!/usr/bin/env bash
# Sourced by the device scripts: unpacks .devbundle (scripts/device-bundle.sh) into $bundle, puts
# its libraries and the device's CUDA on LD_LIBRARY_PATH, names its commit (LOWBIT_COMMIT, also
# written to $1), and fails (exit 3) when the working tree's sources differ from those the
# bundle's binaries were built from — run scripts/device-bundle.sh again before the device call —
# so a session never measures old code.
bundle="$(mktemp -d)"
tar -C "$bundle" -xJf .devbundle/bundle.tar.xz
cuda_home="${CUDA_HOME:-/usr/local/cuda}"
export LD_LIBRARY_PATH="$bundle/lib:$cuda_home/lib64:$cuda_home/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export LOWBIT_COMMIT="$(cat "$bundle/COMMIT" 2>/dev/null || echo unknown)"
echo "bundle of commit $LOWBIT_COMMIT" | tee "$1"
if [[ -f "$bundle/SOURCES.sha256" ]]; then
  if ! stale="$(sha256sum --quiet -c "$bundle/SOURCES.sha256" 2>&1)"; then
    echo "stale bundle: these sources changed since scripts/device-bundle.sh built it:" >&2
    echo "$stale" | head -20 >&2
    exit 3
  fi
fi
