#!/usr/bin/env bash
# Configures and builds Lowbit into build/ (Ninja, ccache, -j2). Extra args go to CMake,
# e.g. scripts/build.sh -DLOWBIT_CUDA=OFF.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=${LOWBIT_JOBS:-2}
cmake -S . -B build -G Ninja "$@" >/dev/null
cmake --build build -j"$jobs"
