#!/usr/bin/env bash
# Streamed loads (`lowbit load --dir`, then unload) of one checkpoint into a fresh runtime: per
# load, wall time, the runtime's CPU time and its minor page faults. Alternate two builds to
# compare them (docs/benchmarks.md, "Streamed loads reuse the memory of large received tensors").
#   bench/streaming/load_series.sh BUILD_DIR CHECKPOINT_DIR [LOADS] [TAG]
# A multi-layer checkpoint shows the reuse, e.g.
#   build/tools/lowbit-gen-model --out /tmp/m4/model --hidden 4096 --intermediate 14336 --layers 4 \
#     --heads 32 --kv_heads 8 --vocab 512 --outlier_channels 0
#   build/tools/lowbit-rtn --model /tmp/m4/model --out /tmp/m4/w8a8 --scheme W8A8
set -euo pipefail
build=$1 ckpt=$2 n=${3:-3} tag=${4:-$(basename "$1")}
port=$((51000 + RANDOM % 5000))
"$build/runtime/lowbit-runtime" serve --address=127.0.0.1:$port > /dev/null 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true' EXIT
sleep 1
stat() { awk '{print $10, $14 + $15}' "/proc/$pid/stat"; }  # minor faults, CPU clock ticks
for i in $(seq 1 "$n"); do
  read -r f0 c0 < <(stat); t0=$(date +%s.%N)
  "$build/cli/lowbit" load --name "m$i" --dir "$ckpt" --runtime 127.0.0.1:$port > /dev/null
  t1=$(date +%s.%N); read -r f1 c1 < <(stat)
  "$build/cli/lowbit" unload "m$i" --runtime 127.0.0.1:$port > /dev/null
  awk -v tag="$tag" -v i="$i" -v t0="$t0" -v t1="$t1" -v c="$((c1 - c0))" -v f="$((f1 - f0))" \
    'BEGIN { printf "%s load %d: wall %.3f s, runtime cpu %d ms, minor faults %d\n", tag, i, t1 - t0, c * 10, f }'
done
