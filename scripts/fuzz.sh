#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (ASan + UBSan) into build-fuzz/ and runs each for
# FUZZ_SECONDS (default 60) over a copy of its seed corpus. Exits non-zero on any crash.
#   bash scripts/fuzz.sh            # every target, 60 s each
#   FUZZ_SECONDS=10 bash scripts/fuzz.sh fuzz_recipe
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-60}
CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DLOWBIT_FUZZ=ON -DLOWBIT_CUDA=OFF \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for f in tests/fuzz/fuzz_*.cc; do targets+=("$(basename "$f" .cc)"); done
fi
cmake --build build-fuzz -j2 --target "${targets[@]}"
for t in "${targets[@]}"; do
  corpus=build-fuzz/corpus/${t#fuzz_}
  mkdir -p "$corpus"
  cp -n tests/fuzz/corpus/"${t#fuzz_}"/* "$corpus"/ 2>/dev/null || true
  echo "== $t: ${seconds}s"
  ./build-fuzz/tests/fuzz/"$t" -max_total_time="$seconds" -print_final_stats=1 "$corpus" 2>&1 | tail -n 12
done
