#!/usr/bin/env bash
# The README's test command: installs dependencies, builds, and runs every test that needs no
# GPU (GPU tests carry the ctest label `gpu` and run on the device: scripts/device-kernels.sh and
# scripts/device-runtime.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh "$@"
cd build
ctest --output-on-failure -LE gpu -j2
