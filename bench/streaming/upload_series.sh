#!/usr/bin/env bash
# Back-to-back `lowbit upload-model` of one model directory into a fresh calibrator: per upload,
# MB/s (wall time of the CLI process, start-up included) and the server's CPU time. Alternate two
# builds to compare them (docs/benchmarks.md, "Uploads around the page cache").
#   bench/streaming/upload_series.sh BUILD_DIR MODEL_DIR [UPLOADS] [TAG]
#   e.g. bench/streaming/upload_series.sh build /tmp/bench-rpc/models/bench 6 new
set -euo pipefail
build=$1 model=$2 n=${3:-6} tag=${4:-$(basename "$1")}
state=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$state"' EXIT
port=$((50100 + RANDOM % 5000))
"$build/calibrator/lowbit-calibrator" serve --address=127.0.0.1:$port --state_dir="$state/s" > "$state/log" 2>&1 &
pid=$!
sleep 1
bytes=$(du -sb "$model" | cut -f1)
cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; }  # clock ticks (100 Hz)
for i in $(seq 1 "$n"); do
  c0=$(cpu); t0=$(date +%s.%N)
  "$build/cli/lowbit" upload-model "$model" "up$i" --calibrator 127.0.0.1:$port > /dev/null
  t1=$(date +%s.%N); c1=$(cpu)
  awk -v tag="$tag" -v i="$i" -v b="$bytes" -v t0="$t0" -v t1="$t1" -v c="$((c1 - c0))" \
    'BEGIN { printf "%s upload %d: %.0f MB/s, wall %.3f s, server cpu %d ms\n", tag, i, b / (t1 - t0) / 1e6, t1 - t0, c * 10 }'
done
