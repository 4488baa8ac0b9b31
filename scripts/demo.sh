#!/usr/bin/env bash
# The README's main-job command: installs dependencies, builds, and runs `lowbit demo` on the
# built-in default model — both services started on loopback, the model calibrated (W8A8,
# W4A16, FP8), each checkpoint loaded into the runtime and its GEMMs checked against the float
# layers (see README.md). Output lands in demo-out/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
./build/cli/lowbit demo --out demo-out "$@"
