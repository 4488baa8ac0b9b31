#!/usr/bin/env bash
# The README's main-job command: installs dependencies, builds, and runs the demo on the
# built-in default model (see README.md). Output lands in demo-out/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
./build/tools/lowbit-demo --out demo-out "$@"
